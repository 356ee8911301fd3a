"""Training data for pairwise preference models: RLHFlow's comparison rows, preference pairs, both orders, labels.

Two input schemas are accepted (detected from the columns):

- **RLHFlow comparisons** (``RLHFlow/pair_preference_model_dataset``): ``messages`` =
  ``[{"role": "user", "content": <filled PAIR_TEMPLATE>}, {"role": "assistant", "content": "A" | "B"}]``.
  The user content is parsed back into (context, response A, response B) so that the pair can be presented in both
  orders and judged on a held-out split.
- **Preference pairs** (TRL's format): ``prompt`` (str or messages) + ``chosen``/``rejected`` (str or a one-message
  assistant list), or ``chosen``/``rejected`` as whole conversations (RLHFlow's "standard" format: the conversation
  before the last assistant turn is the shared context, the last turn the response). Whole conversations may come
  with a ``prompt`` (``HuggingFaceH4/ultrafeedback_binarized``) that repeats their first user turn (a string) or
  their whole context (messages); any other ``prompt`` drops the row (``prompt_mismatch``).

A dataset with both ``messages`` and ``chosen``/``rejected`` columns (ultrafeedback_binarized: ``messages`` is the
chosen conversation) is read as preference pairs.

Rows that fail RLHFlow's filters (``process_pair_data.py``: alternating user/assistant turns from a user turn, equal
context in chosen and rejected, no empty turn) are dropped and counted by reason; so are pairs with identical
responses (no preference to learn; RLHFlow kept them).

A pair becomes ordered :class:`Comparison` s, both orders by default (RLHFlow drew one unseeded random order per
pair; ``orders="random"`` does that with a seed; ``orders="as_is"`` keeps the one order an RLHFlow comparison row
holds). A comparison is tokenized with the judge's own formatter: the training sequence is *exactly* the ids
:class:`~rlhf_pairs.PairPreferenceJudge` reads at inference, followed by a :class:`LabelTokens` suffix:

- ``judge`` (default): the label token ("A" or "B"), optionally plus the end-of-turn token, trained at the position
  the judge reads;
- ``rlhflow``: RLHFlow's axolotl sequence (:func:`rlhflow_label_tokens`): the assistant header, the label, the
  end of turn, with the loss on the assistant turn as axolotl masks it.

Every other position is labelled -100.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rlhf_pairs.configs import LABEL_FORMATS, ORDERS, OVERLONG
from rlhf_pairs.data_utils import Prompt, load_split, validate_prompt
from rlhf_pairs.judges.pair_lm import PAIR_TEMPLATE, PairPreferenceFormatter
from rlhf_pairs.utils.distributed import get_logger

logger = get_logger(__name__)  # main process only (rlhf_pairs.utils.distributed)
T = TypeVar("T")

LABELS = ("A", "B")
IGNORE_INDEX = -100

# The fixed text around the three slots of PAIR_TEMPLATE, used to parse a filled template back.
_HEAD, _MID_A, _MID_B, _TAIL = "[CONTEXT] ", " [RESPONSE A] ", " [RESPONSE B] ", " \n"
assert PAIR_TEMPLATE == _HEAD + "{context}" + _MID_A + "{response_A}" + _MID_B + "{response_B}" + _TAIL


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two responses, ``chosen`` being the better one.

    ``prompt`` is the conversation before the responses (str or messages). Pairs parsed from RLHFlow comparison rows
    have no prompt, only ``context``: the conversation already rendered with the card's plain template (the
    ``{context}`` slot of the comparison template).
    """

    prompt: Prompt | None
    chosen: str
    rejected: str
    context: str | None = None
    label: str | None = None  # an RLHFlow comparison row's answer: "A" when chosen is its response A


@dataclass(frozen=True)
class Comparison:
    """One ordered comparison: the pair LM reads (context, response A, response B) and should answer ``label``."""

    context: str
    response_a: str
    response_b: str
    label: str
    pair_index: int


@dataclass
class ConversionStats:
    """How many rows went in, how many pairs came out, and the dropped rows by reason."""

    rows: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"{self.rows} rows -> {self.pairs} pairs; dropped {sum(self.dropped.values())} ({reasons})"


class RowDropped(ValueError):
    """A row that a filter rejects; the message is the reason counted in :class:`ConversionStats`."""


class RenderedContextFormatter(PairPreferenceFormatter):
    """:class:`~rlhf_pairs.PairPreferenceFormatter` whose "prompts" are contexts already rendered with the card's plain
    template (what RLHFlow comparison rows hold). Everything else, encoding and truncation included, is the inference
    code; for a prompt ``p``, ``encode(formatter.context(p), a, b)`` equals the judge's ``encode(p, a, b)``.
    """

    def context(self, prompt: str) -> str:  # type: ignore[override]
        if not isinstance(prompt, str):
            raise ValueError(f"RenderedContextFormatter takes rendered context strings, got {type(prompt).__name__}")
        return prompt


# ---------------------------------------------------------------------------------------------------------------------
# Loading and filtering
# ---------------------------------------------------------------------------------------------------------------------


def detect_schema(column_names: Sequence[str]) -> str:
    """``"preference"`` when there are ``chosen`` and ``rejected`` columns (whatever else there is: a ``messages``
    column beside them, as in ultrafeedback_binarized, is a conversation, not a comparison), else ``"messages"``
    (RLHFlow comparisons) when there is a ``messages`` column; ``ValueError`` otherwise."""
    if "chosen" in column_names and "rejected" in column_names:
        return "preference"
    if "messages" in column_names:
        return "messages"
    raise ValueError(
        f"expected a `messages` column (RLHFlow comparisons) or `chosen`/`rejected` columns (preference pairs), "
        f"got columns {sorted(column_names)}"
    )


def parse_comparison(messages: Sequence[dict]) -> tuple[str, str, str, str]:
    """(context, response A, response B, label) of an RLHFlow comparison row; raises ``RowDropped`` when the row is not
    ``[user: filled template, assistant: "A"|"B"]`` or the template cannot be split unambiguously.

    The template ends with " \\n"; a user content whose trailing whitespace was stripped (ending in response B's last
    non-blank character) is read too. Any other deviation from the template drops the row."""
    if (
        not isinstance(messages, (list, tuple))
        or len(messages) != 2
        or any(not isinstance(m, dict) or not isinstance(m.get("content"), str) for m in messages)
        or [str(m.get("role", "")).lower() for m in messages] != ["user", "assistant"]
    ):
        raise RowDropped("not_a_comparison")
    content, label = messages[0]["content"], messages[1]["content"].strip()
    if label not in LABELS or not content.startswith(_HEAD):
        raise RowDropped("not_a_comparison")
    if content.endswith(_TAIL):
        body = content[len(_HEAD) : len(content) - len(_TAIL)]
    elif content == content.rstrip():  # stripped by some export: the tail was whitespace only
        body = content[len(_HEAD) :]
    else:
        raise RowDropped("not_a_comparison")
    # A response quoting the markers would make the split ambiguous: such rows are dropped, not guessed.
    if body.count(_MID_A) != 1 or body.count(_MID_B) != 1 or body.index(_MID_A) > body.index(_MID_B):
        raise RowDropped("ambiguous_template")
    context, rest = body.split(_MID_A)
    response_a, response_b = rest.split(_MID_B)
    if not response_a.strip() or not response_b.strip():
        raise RowDropped("empty_turn")
    return context, response_a, response_b, label


def _response_text(value) -> str:
    """A response given as a string or as a one-message assistant list (TRL's conversational format)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (int, float, bool)):
        raise RowDropped("not_text")  # a null or numeric response is missing data, not a malformed conversation
    if (
        isinstance(value, (list, tuple))
        and len(value) == 1
        and isinstance(value[0], dict)
        and str(value[0].get("role", "")).lower() == "assistant"
        and isinstance(value[0].get("content"), str)
    ):
        return value[0]["content"]
    raise RowDropped("not_alternating")


def _is_conversation(value) -> bool:
    """Whether a ``chosen``/``rejected`` value is a whole conversation (a message list opening with a user turn)
    rather than a response (a string or TRL's one-message assistant list)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and isinstance(value[0], dict)
        and str(value[0].get("role", "")).lower() == "user"
    )


def _roles_alternate(conversation: Sequence[dict]) -> bool:
    return all(
        isinstance(m, dict) and str(m.get("role", "")).lower() == ("user", "assistant")[i % 2]
        for i, m in enumerate(conversation)
    )


def split_conversations(chosen: Sequence[dict], rejected: Sequence[dict]) -> tuple[list[dict], str, str]:
    """(context, chosen response, rejected response) of two whole conversations with RLHFlow's filters: each
    alternates user/assistant turns from a user turn and ends with the assistant's answer, and everything before
    that answer (the context) is the same in both; raises ``RowDropped`` otherwise."""
    if not isinstance(chosen, (list, tuple)) or not isinstance(rejected, (list, tuple)):
        raise RowDropped("not_alternating")
    if len(chosen) % 2 or len(rejected) % 2 or not chosen:
        raise RowDropped("not_alternating")
    if not _roles_alternate(chosen) or not _roles_alternate(rejected):
        raise RowDropped("not_alternating")
    if any(not isinstance(m.get("content"), str) for m in [*chosen, *rejected]):
        raise RowDropped("not_alternating")
    if len(chosen) != len(rejected) or any(c["content"] != r["content"] for c, r in zip(chosen[:-1], rejected)):
        raise RowDropped("unequal_context")
    context = [{"role": m["role"].lower(), "content": m["content"]} for m in chosen[:-1]]
    return context, chosen[-1]["content"], rejected[-1]["content"]


def _prompt_matches(prompt, context: list[dict]) -> bool:
    """Whether a row's ``prompt`` restates the context of its conversations: the first user turn (a string, as in
    ultrafeedback_binarized, surrounding whitespace aside) or the whole context (messages)."""
    if isinstance(prompt, str):
        return prompt.strip() == context[0]["content"].strip()
    try:
        validate_prompt(prompt)
    except ValueError:
        return False
    return [(str(m["role"]).lower(), m["content"]) for m in prompt] == [(m["role"], m["content"]) for m in context]


def pair_from_row(row: dict) -> PreferencePair:
    """A :class:`PreferencePair` from a preference row, with RLHFlow's filters; raises ``RowDropped`` with the reason.

    ``chosen``/``rejected`` are either responses (a string or a one-message assistant list) answering ``prompt``,
    or whole conversations (:func:`split_conversations`), with or without a ``prompt`` restating them."""
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt")
    if _is_conversation(chosen) or _is_conversation(rejected):
        context, chosen, rejected = split_conversations(chosen, rejected)
        if prompt is not None and not _prompt_matches(prompt, context):
            raise RowDropped("prompt_mismatch")
        prompt = context
    elif prompt is not None:
        try:
            validate_prompt(prompt)
        except ValueError:
            raise RowDropped("not_alternating") from None
        chosen, rejected = _response_text(chosen), _response_text(rejected)
    else:
        raise RowDropped("not_alternating")  # responses without a prompt to answer
    turns = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    if any(not t.strip() for t in turns) or not chosen.strip() or not rejected.strip():
        raise RowDropped("empty_turn")
    if chosen == rejected:
        raise RowDropped("identical_responses")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)


def convert_rows(rows: Iterable[dict], convert: Callable[[dict], T]) -> tuple[list[T], ConversionStats]:
    """``convert(row)`` of every row it does not drop (it raises :class:`RowDropped` with the reason), and the counts
    of the rows read, kept (``pairs``) and dropped by reason."""
    stats = ConversionStats()
    kept: list[T] = []
    for row in rows:
        stats.rows += 1
        try:
            kept.append(convert(row))
        except RowDropped as dropped:
            stats.dropped[str(dropped)] += 1
    stats.pairs = len(kept)
    return kept, stats


def preference_pairs(rows: Iterable[dict], schema: str | None = None) -> tuple[list[PreferencePair], ConversionStats]:
    """Filtered :class:`PreferencePair` s of ``rows`` (either schema, detected from the first row when ``schema`` is
    None), and the counts of what was dropped and why."""

    def convert(row: dict) -> PreferencePair:
        nonlocal schema
        if schema is None:
            schema = detect_schema(list(row))
        if schema != "messages":
            return pair_from_row(row)
        context, response_a, response_b, label = parse_comparison(row["messages"])
        if response_a == response_b:
            raise RowDropped("identical_responses")
        chosen, rejected = (response_a, response_b) if label == "A" else (response_b, response_a)
        return PreferencePair(None, chosen, rejected, context=context, label=label)

    return convert_rows(rows, convert)


def load_preference_splits(
    args, seed: int, schema: str | None = None, trainer: str = "this job", rows=None
) -> tuple[list[PreferencePair], list[PreferencePair], ConversionStats]:
    """(training pairs, held-out pairs, the train split's :class:`ConversionStats`) for a pair-model training config
    (:func:`convert_splits`); ``rows``: the train split when the caller has read it already.

    ``schema="preference"`` refuses RLHFlow comparison rows (their prompt exists only as rendered text), naming
    ``trainer``. The splits are read by :func:`~rlhf_pairs.data_utils.load_split`, the loader of every job: a bad
    local ``.jsonl``/``.json`` file raises ``ValueError`` naming its file and line. Raises ``ValueError`` when no
    training pair is left."""
    if rows is None:
        rows = load_split(args.dataset_name, args.dataset_config, args.dataset_train_split)
    if schema == "preference" and detect_schema(rows.column_names) != "preference":
        raise ValueError(
            f"{trainer} trains on prompt/chosen/rejected pairs; {args.dataset_name!r} has RLHFlow comparison rows "
            f"(columns {rows.column_names}: `messages` without `chosen`/`rejected`), whose prompt is rendered text"
        )
    return convert_splits(rows, args, seed, lambda split: preference_pairs(split, schema=schema))


def convert_splits(
    rows, args, seed: int, convert: Callable[[Iterable[dict]], tuple[list[T], ConversionStats]], what: str = "pairs"
) -> tuple[list[T], list[T], ConversionStats]:
    """(training items, held-out items, the train split's :class:`ConversionStats`): ``convert`` of ``rows`` (the
    train split) and of the held-out rows of a pair-model training config (``dataset_name``, ``dataset_config``,
    ``dataset_test_split``, ``eval_size``, ``max_train_pairs``, ``max_eval_pairs``): the test split when one is named,
    else ``eval_size`` items of the train split drawn with ``seed``; both lists are cut to their maximum. Each split's
    counts are logged (``what``: the items' name). Raises ``ValueError`` when no training item is left."""
    items, stats = convert(rows)
    logger.info("train split: %s", stats.summary().replace("pairs", what))
    if args.dataset_test_split:
        eval_items, eval_stats = convert(load_split(args.dataset_name, args.dataset_config, args.dataset_test_split))
        logger.info("test split: %s", eval_stats.summary().replace("pairs", what))
    else:
        items, eval_items = split_pairs(items, args.eval_size, seed)
    items, eval_items = items[: args.max_train_pairs], eval_items[: args.max_eval_pairs]
    if not items:
        raise ValueError(f"no training {what.removesuffix('s')} left in {args.dataset_name!r} ({stats.summary()})")
    return items, eval_items, stats


def split_pairs(pairs: Sequence, eval_size: float, seed: int) -> tuple[list, list]:
    """(train, held out): ``eval_size`` pairs (a fraction if < 1) drawn with ``seed``. Splitting pairs, not
    comparisons, keeps both orders of a pair on the same side."""
    if eval_size < 0:
        raise ValueError(f"`eval_size` must be >= 0, got {eval_size}")
    count = round(eval_size * len(pairs)) if eval_size < 1 else int(eval_size)
    if count >= len(pairs) and count > 0:
        raise ValueError(f"`eval_size`={eval_size} holds out {count} of {len(pairs)} pairs: nothing left to train on")
    held = set(random.Random(seed).sample(range(len(pairs)), count))
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


# ---------------------------------------------------------------------------------------------------------------------
# Comparisons and token labels
# ---------------------------------------------------------------------------------------------------------------------


def pair_context(pair: PreferencePair, formatter: PairPreferenceFormatter) -> str:
    """The rendered context of a pair: as parsed from a comparison row, or the judge's rendering of its prompt."""
    return pair.context if pair.context is not None else PairPreferenceFormatter.context(formatter, pair.prompt)


def comparisons(
    pairs: Sequence[PreferencePair], formatter: PairPreferenceFormatter, orders: str = "both", seed: int = 0
) -> list[Comparison]:
    """Ordered comparisons of ``pairs``: both orders (chosen as A, then chosen as B), one order per pair drawn with
    ``seed`` (``orders="random"``: RLHFlow's data preparation, made reproducible), or the order of the RLHFlow
    comparison row each pair was read from (``orders="as_is"``: the dataset's own draw, row for row).

    Raises ``ValueError`` for an unknown ``orders``, and for ``as_is`` on a pair without a row order (read from a
    prompt/chosen/rejected row)."""
    if orders not in ORDERS:
        raise ValueError(f"`orders` must be one of {ORDERS}, got {orders!r}")
    rng = random.Random(seed)
    out = []
    for i, pair in enumerate(pairs):
        context = pair_context(pair, formatter)
        if orders == "as_is":
            if pair.label is None:
                raise ValueError(
                    f"`orders: as_is` keeps the A/B order of RLHFlow comparison rows (`messages`); pair {i} comes "
                    "from a prompt/chosen/rejected row, which has no order: use `both` or `random`"
                )
            positions = (LABELS.index(pair.label),)
        else:
            positions = (0, 1) if orders == "both" else (rng.randrange(2),)
        for chosen_position in positions:
            a, b = (pair.chosen, pair.rejected) if chosen_position == 0 else (pair.rejected, pair.chosen)
            out.append(Comparison(context, a, b, LABELS[chosen_position], i))
    return out


@dataclass(frozen=True)
class LabelTokens:
    """What a training sequence appends to the judge's input for each answer, and the loss labels of those tokens.

    ``ids[label]`` and ``labels[label]`` (same length, -100 where there is no loss) for ``label`` in ("A", "B");
    ``name`` is the label format. Build one with :meth:`judge` or :func:`rlhflow_label_tokens`.
    """

    name: str
    ids: dict[str, tuple[int, ...]]
    labels: dict[str, tuple[int, ...]]

    @property
    def max_length(self) -> int:
        """The longest suffix: the room the judge's input must leave within a training ``max_length``."""
        return max(len(ids) for ids in self.ids.values())

    @classmethod
    def judge(cls, formatter: PairPreferenceFormatter, eot_token_id: int | None = None) -> LabelTokens:
        """The label token right after the judge's input, at the position the judge reads (+ ``eot_token_id``),
        every appended token trained."""
        ids = {
            label: (token_id,) if eot_token_id is None else (token_id, eot_token_id)
            for label, token_id in zip(LABELS, (formatter.token_id_a, formatter.token_id_b))
        }
        return cls("judge", ids, dict(ids))


def _axolotl_ids(tokenizer, text: str, add_eos: bool) -> list[int]:
    """Axolotl's ``PromptTokenizingStrategy._tokenize(text, add_eos_token=add_eos, strip_bos_token=True)`` (its
    per-turn truncation at the sequence length aside): the tokenizer's own call, EOS appended unless already last,
    a leading BOS removed."""
    ids = list(tokenizer(text)["input_ids"])
    if add_eos and ids and tokenizer.eos_token_id is not None and ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    if ids and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    return ids


def rlhflow_label_tokens(formatter: PairPreferenceFormatter) -> LabelTokens:
    """RLHFlow's training suffix: axolotl 55cc214 (the commit RLHF-Reward-Modeling's ``pair-pm/README.md`` pins) with
    ``type: sharegpt.load_ultrachat``, ``conversation: llama-3``, ``train_on_inputs: false``.

    Axolotl tokenizes each turn on its own: ``tokenizer(role + content)`` without the BOS it adds, EOS appended to
    the assistant turn unless it already ends with it, and the first ``len(tokenizer(role.rstrip()))`` tokens of
    the assistant turn masked. With Llama-3 the suffix is ``<|start_header_id|>assistant<|end_header_id|>`` (no
    loss) + ``\n\n``, the label, ``<|eot_id|>`` (loss), and the user turn before it is exactly the judge's input
    (same text, no BOS). The role header is taken from the tokenizer's chat template (its generation prompt) and the
    turn from its rendering of the assistant message: for Llama-3 these are fastchat's ``llama-3`` turns, so the
    result is RLHFlow's; another template gets the same rule.

    Raises ``ValueError`` when the chat template has no assistant header to follow the user turn.
    """
    tokenizer = formatter.tokenizer
    user = [{"role": "user", "content": "x"}]
    plain = tokenizer.apply_chat_template(user, tokenize=False)
    prompted = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    header = prompted[len(plain) :]
    if not prompted.startswith(plain) or not header.strip():
        raise ValueError(
            "`label_format: rlhflow` needs a chat template that renders an assistant header after the user turn "
            f"(its generation prompt); {type(tokenizer).__name__}'s template adds {header!r}"
        )
    role_length = len(_axolotl_ids(tokenizer, header.rstrip(), add_eos=False))
    ids, labels = {}, {}
    for label in LABELS:
        rendered = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": label}], tokenize=False)
        turn = rendered[len(plain) :]
        if not rendered.startswith(plain) or not turn.startswith(header):
            raise ValueError(
                f"`label_format: rlhflow`: the chat template renders the assistant turn as {turn!r}, which does not "
                f"start with its generation prompt {header!r}"
            )
        turn_ids = _axolotl_ids(tokenizer, turn, add_eos=True)
        masked = min(role_length, len(turn_ids))
        ids[label] = tuple(turn_ids)
        labels[label] = (IGNORE_INDEX,) * masked + tuple(turn_ids[masked:])
    return LabelTokens("rlhflow", ids, labels)


def label_tokens_for(
    label_format: str, formatter: PairPreferenceFormatter, eot_token_id: int | None = None
) -> LabelTokens:
    """The :class:`LabelTokens` of a ``label_format`` (``judge`` or ``rlhflow``)."""
    if label_format == "judge":
        return LabelTokens.judge(formatter, eot_token_id)
    if label_format == "rlhflow":
        if eot_token_id is not None:
            raise ValueError("an end-of-turn target is for `label_format: judge`; `rlhflow` already trains one")
        return rlhflow_label_tokens(formatter)
    raise ValueError(f"`label_format` must be one of {LABEL_FORMATS}, got {label_format!r}")


def tokenize_comparison(
    comparison: Comparison, formatter: RenderedContextFormatter, label_tokens: LabelTokens | None = None
) -> dict[str, list[int] | bool]:
    """``input_ids`` = the judge's inference ids for the comparison + the ``label_tokens`` suffix of its label
    (default: :meth:`LabelTokens.judge`, the label token alone); ``labels`` = -100 on the judge's ids, the suffix's
    loss labels after them; ``truncated`` = whether the formatter had to cut the comparison to its ``max_length``
    (which must leave room for the suffix)."""
    label_tokens = label_tokens or LabelTokens.judge(formatter)
    before = formatter.num_truncated
    prefix = formatter.encode(comparison.context, comparison.response_a, comparison.response_b)
    return {
        "input_ids": prefix + list(label_tokens.ids[comparison.label]),
        "labels": [IGNORE_INDEX] * len(prefix) + list(label_tokens.labels[comparison.label]),
        "truncated": formatter.num_truncated > before,
    }


def tokenized_dataset(
    comps: Sequence[Comparison],
    formatter: RenderedContextFormatter,
    label_tokens: LabelTokens | None = None,
    num_proc: int | None = None,
    cache_dir: str | Path | None = None,
):
    """A ``datasets.Dataset`` with ``input_ids``/``labels`` (SFTTrainer uses a ``labels`` column as is) and
    ``truncated``, one row per comparison, in order (``label_tokens``: see :func:`tokenize_comparison`).

    With ``cache_dir`` the result is written there as an Arrow file named after a fingerprint of its inputs (the
    comparisons, the tokenizer, ``formatter.max_length``, the label tokens, the rlhf_pairs version and the source of
    the tokenization code, so an edited checkout never reads a stale file) and read back
    instead of recomputed when that file exists: under ``main_process_first`` the other processes of a launch load
    what the main process built. Without it the dataset stays in memory (``datasets`` caches nothing for a dataset
    built from Python lists).
    """
    import datasets
    from datasets.fingerprint import Hasher

    from rlhf_pairs import __version__

    label_tokens = label_tokens or LabelTokens.judge(formatter)
    table = datasets.Dataset.from_dict(
        {
            "context": [c.context for c in comps],
            "response_a": [c.response_a for c in comps],
            "response_b": [c.response_b for c in comps],
            "label": [c.label for c in comps],
            "pair_index": [c.pair_index for c in comps],
        }
    )

    def encode(row: dict) -> dict:
        return tokenize_comparison(Comparison(**row), formatter, label_tokens)

    num_proc = num_proc if num_proc and len(comps) >= 1000 * num_proc else None
    fingerprint = cache_file = None
    if cache_dir is not None:
        # Explicit, not datasets' hash of `encode`: the formatter's truncation counter is state that differs between
        # a process that tokenized and one that loaded, and would change the hash.
        fingerprint = Hasher.hash(
            [table._fingerprint, formatter.tokenizer, type(formatter).__qualname__, formatter.max_length]
            + [label_tokens.name, sorted(label_tokens.ids.items()), sorted(label_tokens.labels.items())]
            + [__version__, _tokenization_code()]
        )
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"comparisons-{fingerprint}.arrow")
    return table.map(
        encode,
        remove_columns=table.column_names,
        num_proc=num_proc,
        desc="Tokenizing comparisons",
        cache_file_name=cache_file,
        new_fingerprint=fingerprint,
        load_from_cache_file=cache_file is not None,
    )


def apply_overlong(dataset, overlong: str):
    """(``dataset`` without its ``truncated`` column, how many of its comparisons were over-long): ``truncate``
    keeps them as the formatter truncated them (the judge's rule), ``drop`` removes them (axolotl's
    ``drop_long_seq``: a row longer than the sequence length is not trained)."""
    if overlong not in OVERLONG:
        raise ValueError(f"`overlong` must be one of {OVERLONG}, got {overlong!r}")
    count = sum(dataset["truncated"])
    if overlong == "drop" and count:
        dataset = dataset.filter(lambda truncated: not truncated, input_columns="truncated", desc="Dropping over-long")
    return dataset.remove_columns("truncated"), count


def _tokenization_code() -> str:
    """The source of the modules that turn a comparison into ids (part of the tokenized-cache fingerprint)."""
    from rlhf_pairs import tokenization
    from rlhf_pairs.judges import pair_lm

    return "".join(Path(module.__file__).read_text() for module in (pair_lm, tokenization, sys.modules[__name__]))
