"""Token ids of one ordered comparison for a generative judge: RLHFlow's pair-PM format (the card's exact encoding) or
any chat LM with a :class:`~rlhf_pairs.judges.templates.JudgeTemplate`. The same formatter builds inference inputs,
training sequences and held-out evaluation, so they cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rlhf_pairs.data_utils import Prompt, as_messages
from rlhf_pairs.judges.templates import PLAIN_CHAT_TEMPLATE, JudgeTemplate, load_template, question_text
from rlhf_pairs.tokenization import SafeEncoder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAIR_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {response_A} [RESPONSE B] {response_B} \n"
_SENTINEL = "\x00RLHF_PAIRS_CONTENT\x00"
_PART = "\x00RLHF_PAIRS_PART_{}\x00"


class ComparisonFormatter:
    """Shared by the formatters: the verdict labels' token ids (checked), truncation and the template floor.

    Truncation (only when ``max_length`` is set and exceeded): the oldest context tokens go first, then both
    responses are cut from their ends to equal shares; as a last resort the leftmost tokens are dropped. The end
    of the template, where the model decides, is always kept.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        labels: Sequence[str],
        max_length: int | None = None,
        owner: str = "judge",
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.encoder = SafeEncoder(tokenizer)
        self.labels = tuple(labels)
        ids = [tokenizer.encode(label, add_special_tokens=False) for label in self.labels]
        if any(len(i) != 1 for i in ids):
            raise ValueError(
                f"the {owner}'s tokenizer {type(tokenizer).__name__} must encode the verdict labels {self.labels} as "
                f"single tokens, got {ids}; choose labels that are one token each (judge_labels)"
            )
        self.token_id_a, self.token_id_b = ids[0][0], ids[1][0]
        unknown = {tokenizer.unk_token_id} - {None}
        if self.token_id_a == self.token_id_b or {self.token_id_a, self.token_id_b} & unknown:
            raise ValueError(
                f"the {owner}'s tokenizer {type(tokenizer).__name__} maps {self.labels[0]!r} to id {self.token_id_a} "
                f"and {self.labels[1]!r} to id {self.token_id_b} (unknown-token id: {tokenizer.unk_token_id}): the "
                "judge could not tell the two responses apart (P = 0.5 everywhere); use the judge's own tokenizer or "
                "other labels"
            )
        if tokenizer.chat_template is None:
            raise ValueError(f"the {owner}'s tokenizer has no chat template to wrap the comparison in")
        self.num_truncated = 0

    def check_floor(self) -> None:
        """Refuse a ``max_length`` shorter than the template itself (every sequence would lose its start)."""
        if self.max_length is not None:
            floor = len(self._encode_filled(self.context(""), "", ""))
            if self.max_length <= floor:
                raise ValueError(
                    f"max_length={self.max_length} cannot hold a comparison: the template alone takes {floor} tokens "
                    "(empty context and responses); give a larger max_length or None (the model's maximum)"
                )

    def context(self, prompt: Prompt) -> str:
        raise NotImplementedError

    def _encode_filled(self, context: str, response_a: str, response_b: str) -> list[int]:
        raise NotImplementedError

    def encode(self, prompt: Prompt, response_a: str, response_b: str) -> list[int]:
        context = self.context(prompt)
        ids = self._encode_filled(context, response_a, response_b)
        if self.max_length is None or len(ids) <= self.max_length:
            return ids
        self.num_truncated += 1
        return self._truncate(context, response_a, response_b, ids)

    def _truncate(self, context: str, response_a: str, response_b: str, ids: list[int]) -> list[int]:
        assert self.max_length is not None  # encode() truncates only with a max_length
        max_length = self.max_length
        decode = self.tokenizer.decode
        excess = len(ids) - max_length
        context_ids = self.encoder.plain(context)
        context = decode(context_ids[min(excess, len(context_ids)) :]) if excess < len(context_ids) else ""
        ids = self._encode_filled(context, response_a, response_b)
        excess = len(ids) - max_length
        if excess > 0:
            a_ids, b_ids = self.encoder.plain(response_a), self.encoder.plain(response_b)
            budget = max(len(a_ids) + len(b_ids) - excess, 0)
            a_keep = min(len(a_ids), max(budget // 2, budget - len(b_ids)))
            b_keep = min(len(b_ids), budget - a_keep)
            ids = self._encode_filled(context, decode(a_ids[:a_keep]), decode(b_ids[:b_keep]))
        # Decoding and re-encoding can shift a few tokens; the end of the template is what the model reads.
        return ids[-max_length:]


class PairPreferenceFormatter(ComparisonFormatter):
    """Turns (prompt, response A, response B) into the pair preference LM's token ids.

    Semantics follow the RLHFlow card: ``context`` is the conversation rendered with the plain template, filled into
    :data:`PAIR_TEMPLATE`, wrapped as one user message with the model's chat template (no generation prompt),
    BOS text removed, encoded without special tokens. ``labels`` are the card's "A" and "B".
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None, labels: Sequence[str] = ("A", "B")
    ) -> None:
        super().__init__(tokenizer, labels, max_length, owner="pair preference LM")
        self.bos_text = tokenizer.bos_token or ""
        wrapped = self.chat_text(_SENTINEL, strip_bos=False)
        if wrapped.count(_SENTINEL) != 1:
            raise ValueError("the tokenizer's chat template must place the user message content exactly once")
        self._chat_prefix, self._chat_suffix = wrapped.split(_SENTINEL)
        self.check_floor()

    def context(self, prompt: Prompt) -> str:
        return self.tokenizer.apply_chat_template(
            as_messages(prompt), chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False
        )

    def chat_text(self, content: str, strip_bos: bool = True) -> str:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
        # The card's `.replace(bos_token, "")`: its only BOS is the template's leading one (a BOS string inside
        # the content takes the safe path), so stripping the prefix is the same and spares templates such as
        # ChatML whose BOS text also opens every turn.
        return self._strip_bos(text) if strip_bos else text

    def _strip_bos(self, text: str) -> str:
        return text[len(self.bos_text) :] if self.bos_text and text.startswith(self.bos_text) else text

    def _encode_filled(self, context: str, response_a: str, response_b: str) -> list[int]:
        content = PAIR_TEMPLATE.format(context=context, response_A=response_a, response_B=response_b)
        if not self.encoder.has_special(content):
            return self.encoder.template(self.chat_text(content))  # the card's exact path
        # Untrusted text holds a special-token string: keep the template's specials, the content's as plain text.
        wrapped = self.chat_text(content, strip_bos=False)
        if not (wrapped.startswith(self._chat_prefix) and wrapped.endswith(self._chat_suffix)):
            raise ValueError("the chat template rewrote the comparison prompt; cannot encode it safely")
        inner = wrapped[len(self._chat_prefix) : len(wrapped) - len(self._chat_suffix)]
        prefix = self._strip_bos(self._chat_prefix)
        return self.encoder.template(prefix) + self.encoder.plain(inner) + self.encoder.template(self._chat_suffix)


class ChatJudgeFormatter(ComparisonFormatter):
    """Any chat LM as a judge: the template's system and user messages rendered with the model's chat template and
    the generation prompt, then the template's ``answer_prefix``; the verdict labels are read at the last position.

    ``context`` here is the template's ``question`` (:func:`~rlhf_pairs.judges.templates.question_text`), the part
    truncation shortens first. Untrusted text (the question and both responses) never becomes special tokens: with
    no special-token string in it the whole text takes one ``encode`` (as ``apply_chat_template(tokenize=True)``
    would); with one, the rendering is split at placeholders and the untrusted pieces are encoded as plain text.
    A chat template that refuses a system turn gets the system message at the head of the user message.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template: JudgeTemplate, max_length: int | None = None
    ) -> None:
        super().__init__(tokenizer, template.labels, max_length, owner=f"judge (template {template.name!r})")
        self.template = template
        self.merge_system = False
        if template.system is not None:
            try:
                tokenizer.apply_chat_template(
                    [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False
                )
            except Exception:  # noqa: BLE001 - jinja2 raises TemplateError for a template without a system role
                self.merge_system = True
        probe = self._render(*(_PART.format(i) for i in range(3)))
        if any(probe.count(_PART.format(i)) != 1 for i in range(3)):
            raise ValueError(
                f"judge template {template.name!r} with this chat template must place the question and each response "
                "exactly once"
            )
        self.check_floor()

    def context(self, prompt: Prompt) -> str:
        return question_text(as_messages(prompt))

    def _render(self, question: str, response_a: str, response_b: str) -> str:
        context = question  # the template's `context` is RLHFlow's rendering; here the question stands in for it
        user = self.template.render_user(question, context, response_a, response_b)
        messages = [{"role": "user", "content": user}]
        if self.template.system is not None:
            if self.merge_system:
                messages = [{"role": "user", "content": f"{self.template.system}\n\n{user}"}]
            else:
                messages.insert(0, {"role": "system", "content": self.template.system})
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + self.template.answer_prefix

    def _encode_filled(self, context: str, response_a: str, response_b: str) -> list[int]:
        untrusted = (context, response_a, response_b)
        if not any(self.encoder.has_special(text) for text in untrusted):
            return self.encoder.template(self._render(*untrusted))
        text = self._render(*(_PART.format(i) for i in range(3)))
        pieces = []
        for i in sorted(range(3), key=lambda i: text.index(_PART.format(i))):
            head, text = text.split(_PART.format(i))
            pieces.append((head, untrusted[i]))
        ids: list[int] = []
        for head, value in pieces:
            ids += self.encoder.template(head) + self.encoder.plain(value)
        return ids + self.encoder.template(text)


def make_formatter(
    tokenizer: PreTrainedTokenizerBase,
    template: str | JudgeTemplate = "rlhflow",
    labels: Sequence[str] | None = None,
    max_length: int | None = None,
) -> ComparisonFormatter:
    """The formatter of ``template`` (a shipped name, a Jinja file or a :class:`JudgeTemplate`): RLHFlow's card format
    for ``rlhflow``, :class:`ChatJudgeFormatter` otherwise."""
    loaded = load_template(template, labels)
    if loaded.name == "rlhflow":
        return PairPreferenceFormatter(tokenizer, max_length=max_length, labels=loaded.labels)
    return ChatJudgeFormatter(tokenizer, loaded, max_length=max_length)
