"""Pairwise judge prompts for chat LLMs: the text a generative judge reads, its two verdict labels, and how an
answer written as text is parsed. No torch here (the configs check templates at argument parsing).

A :class:`JudgeTemplate` is a user message (Jinja over ``question``, ``context``, ``response_a``, ``response_b``), an
optional system message, the labels (first response better, second better), an ``answer_prefix`` a local judge
writes after the generation prompt before reading the labels' logits, and a text-verdict ``parser``. Shipped
(:data:`TEMPLATE_NAMES`; all three upstream repositories are Apache-2.0, the texts are theirs verbatim):

- ``rlhflow``: RLHFlow's pair preference LM card, rendered exactly as the card does
  (:class:`~rlhf_pairs.judges.formatting.PairPreferenceFormatter`); labels "A"/"B".
- ``alpaca_eval``: AlpacaEval 2.0's annotator prompt (tatsu-lab/alpaca_eval@cd543a1,
  ``evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt``, used by ``weighted_alpaca_eval_gpt4_turbo``):
  a one-token answer, "m" (first output better) or "M".
- ``arena_hard``: Arena-Hard-Auto's judge (lmarena/arena-hard-auto@196f6b8, ``utils/judge_utils.py``
  ``OG_ARENA_HARD_PROMPT`` and ``config/arena-hard-v2.0.yaml`` ``prompt_template``): an explanation, then
  ``[[A>>B]]`` ... ``[[B>>A]]``, parsed with their rule. A local judge skips the explanation: it reads "A"/"B" after
  ``My final verdict is: [[``.
- ``mt_bench``: MT-Bench's ``pair-v2`` (lm-sys/FastChat@0e6d3e4, ``fastchat/llm_judge/data/judge_prompts.jsonl``): an
  explanation, then ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). A local judge reads "A"/"B" after ``[[``.

Any other name is a user's Jinja file for the user message (no system message; labels default to "A" and "B", the
text verdict is the label the answer starts with). ``question`` is a string prompt, a one-turn conversation's
content, or a longer conversation's turns as ``USER: ...``/``ASSISTANT: ...``; ``context`` is RLHFlow's plain
rendering for ``rlhflow`` and equals ``question`` for the others.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jinja2 import Template

PROMPTS_DIR = Path(__file__).with_name("judge_prompts")
TEMPLATE_NAMES = ("rlhflow", "alpaca_eval", "arena_hard", "mt_bench")
VARIABLES = ("question", "context", "response_a", "response_b")

# Arena-Hard-Auto's verdict rule (lmarena/arena-hard-auto@196f6b8, gen_judgment.py get_score and the configs'
# regex_patterns: the patterns in order on the upper-cased answer, the last match of the first that matches) and its
# labels as P(A better) (show_result.py label_to_score, one game; a "significantly" verdict weighs 3 games there).
ARENA_HARD_PATTERNS = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")
ARENA_HARD_SCORES = {
    "A>B": 1.0, "A>>B": 1.0, "A=B": 0.5, "A<<B": 0.0, "A<B": 0.0,
    "B>A": 0.0, "B>>A": 0.0, "B=A": 0.5, "B<<A": 1.0, "B<A": 1.0,
}  # fmt: skip
# FastChat's pair-v2 rule (lm-sys/FastChat@0e6d3e4, llm_judge/common.py): substring checks in this order.
MT_BENCH_VERDICTS = (("[[A]]", 1.0), ("[[B]]", 0.0), ("[[C]]", 0.5))
PARSERS = ("label", "arena_hard", "mt_bench")
# The RLHFlow card's `tokenizer_plain.chat_template`: how the pair LM's `context` renders a conversation.
PLAIN_CHAT_TEMPLATE = (
    "\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}\n\n<turn> user\n {{ message['content'] }}"
    "{% else %}\n\n<turn> assistant\n {{ message['content'] }}{% endif %}{% endfor %}\n\n\n"
)


@dataclass(frozen=True)
class JudgeTemplate:
    """A pairwise judge prompt; see the module docstring.

    Args:
        name: the shipped name, or the user file's path.
        user: the user message, a Jinja template over :data:`VARIABLES`.
        system: the system message, or ``None``.
        labels: the verdict tokens (first response better, second better); each must be one token of the judge's
            tokenizer (checked when a local judge loads).
        answer_prefix: text a local judge appends after the generation prompt before reading the labels' logits.
        verdict_first: whether the answer starts with the verdict label (so an API judge's first-token logprobs are
            the verdict); otherwise an API judge generates and its text verdict is parsed.
        parser: how a text verdict is read (:data:`PARSERS`): ``label`` (the answer is a label, leading whitespace
            and trailing punctuation allowed), ``arena_hard`` or ``mt_bench`` (their own rules, see above).
    """

    name: str
    user: str
    system: str | None = None
    labels: tuple[str, str] = ("A", "B")
    answer_prefix: str = ""
    verdict_first: bool = True
    parser: str = "label"

    def render_user(self, question: str, context: str, response_a: str, response_b: str) -> str:
        """The user message for one ordered pair."""
        return _compile(self.user).render(
            question=question, context=context, response_a=response_a, response_b=response_b
        )

    def parse_verdict(self, text: str) -> float | None:
        """P(first better) from an answer's text (1, 0 or 0.5 for a tie), ``None`` when it holds no verdict."""
        if self.parser == "arena_hard":
            upper = text.upper()
            for pattern in ARENA_HARD_PATTERNS:
                matches = [m for m in re.findall(pattern, upper) if m]
                if matches:
                    return ARENA_HARD_SCORES.get(matches[-1].strip("\n"))  # a label outside their table: None
            return None
        if self.parser == "mt_bench":
            return next((value for verdict, value in MT_BENCH_VERDICTS if verdict in text), None)
        answer = text.strip()
        for label, value in zip(self.labels, (1.0, 0.0)):
            if answer == label or (answer.startswith(label) and not answer[len(label) : len(label) + 1].isalnum()):
                return value
        return None


_COMPILED: dict[tuple[str, bool], Template] = {}


def _compile(source: str, chat: bool = False) -> Template:
    """A judge template (``chat=False``: text kept as written) or a chat template rendered as transformers renders
    chat templates (``trim_blocks``, ``lstrip_blocks``), compiled once."""
    if (source, chat) not in _COMPILED:
        from jinja2 import StrictUndefined
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        options = {"trim_blocks": True, "lstrip_blocks": True} if chat else {"keep_trailing_newline": True}
        environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, **options)
        _COMPILED[source, chat] = environment.from_string(source)
    return _COMPILED[source, chat]


def plain_context(messages: list[dict]) -> str:
    """A conversation rendered with RLHFlow's plain template (the pair LM's ``context``), as
    ``tokenizer.apply_chat_template(messages, chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False)`` renders it."""
    return _compile(PLAIN_CHAT_TEMPLATE, chat=True).render(messages=messages)


def _read(name: str, part: str) -> str:
    return (PROMPTS_DIR / f"{name}.{part}").read_text(encoding="utf-8")


def load_template(template: str | JudgeTemplate = "rlhflow", labels: Sequence[str] | None = None) -> JudgeTemplate:
    """The :class:`JudgeTemplate` named ``template`` (:data:`TEMPLATE_NAMES`) or read from a Jinja file at that path;
    ``labels`` replaces its verdict labels. Raises ``ValueError`` naming the template for an unknown name, a file
    that does not exist or does not parse, a template that leaves out a response, or labels that are not two
    distinct non-empty strings."""
    if isinstance(template, JudgeTemplate):
        loaded = template
    elif template in TEMPLATE_NAMES:
        loaded = _shipped(template)
    else:
        path = Path(template).expanduser()
        if not path.is_file():
            raise ValueError(
                f"judge template {template!r} is neither a shipped template {TEMPLATE_NAMES} nor a Jinja file"
            )
        loaded = JudgeTemplate(name=str(path), user=path.read_text(encoding="utf-8"))
    try:
        _compile(loaded.user)
    except Exception as err:  # noqa: BLE001 - jinja2's TemplateSyntaxError and friends: name the template
        raise ValueError(f"judge template {loaded.name!r} does not parse as Jinja: {err}") from None
    if not all(f"response_{x}" in loaded.user for x in "ab"):
        raise ValueError(
            f"judge template {loaded.name!r} must place both {{{{ response_a }}}} and {{{{ response_b }}}}"
        )
    if labels is not None:
        labels = tuple(labels)
        if len(labels) != 2 or not all(isinstance(x, str) and x.strip() for x in labels) or labels[0] == labels[1]:
            raise ValueError(f"judge labels must be two distinct non-empty strings, got {labels!r}")
        loaded = JudgeTemplate(**{**loaded.__dict__, "labels": labels})
    return loaded


def _shipped(name: str) -> JudgeTemplate:
    user = _read(name, "user.jinja")
    if name == "rlhflow":
        return JudgeTemplate(name, user)
    system = _read(name, "system.txt")
    if name == "alpaca_eval":
        return JudgeTemplate(name, user, system, labels=("m", "M"))
    if name == "arena_hard":
        return JudgeTemplate(
            name, user, system, answer_prefix="My final verdict is: [[", verdict_first=False, parser="arena_hard"
        )
    return JudgeTemplate(name, user, system, answer_prefix="[[", verdict_first=False, parser="mt_bench")


def question_text(messages: list[dict]) -> str:
    """What a template's ``question`` holds for a conversation (lower-case roles): the one user turn's content, or
    every turn as ``USER: ...`` / ``ASSISTANT: ...`` separated by blank lines."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)
