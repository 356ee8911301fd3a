"""Judges written for TRL's former judge API (``trl.BasePairwiseJudge``, removed in TRL 1.x) as pair judges.

TRL's contract (checked against TRL 0.19.0, ``trl/trainer/judges.py``): a pairwise judge implements
``judge(prompts, completions, shuffle_order=True) -> list[int]``, the index (0 or 1) of the better completion of
each pair, ``-1`` when the judge failed on a row. :class:`TRLJudgeAdapter` turns such an object into a
:class:`~rlhf_pairs.PairwiseJudge`, so it works everywhere a judge does (``rank_candidates``, the reward function,
the win-rate callback); :func:`as_judge` wraps any object that has ``judge`` but no ``compare``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from rlhf_pairs.data_utils import Prompt
from rlhf_pairs.judges.base import PairwiseJudge
from rlhf_pairs.ranking import SupportsCompare

# TRL 0.19.0's trl.trainer.utils.SIMPLE_CHAT_TEMPLATE: OnlineDPOTrainer rendered conversational prompts with it
# before calling a judge, so that the judge did not depend on the policy's chat template.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize() + ': ' + message['content'] + '\n\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
ON_FAILURE = ("tie", "raise")


def render_simple_chat(prompt: Prompt) -> str:
    """A string prompt as is; a message list rendered with TRL's ``SIMPLE_CHAT_TEMPLATE`` ("User: ...\\n\\n")."""
    if isinstance(prompt, str):
        return prompt
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in prompt)


class TRLJudgeAdapter(PairwiseJudge):
    """A TRL-style pairwise judge (only ``judge(prompts, completions, shuffle_order=True)`` implemented) as a
    :class:`~rlhf_pairs.PairwiseJudge`.

    :meth:`compare` asks the wrapped judge about both orders of every pair, (a, b) and (b, a), in one ``judge``
    call with ``shuffle_order=False`` (the order is ours to control), and averages: P(a is better than b) =
    (1[a wins as first] + 1[a wins as second]) / 2, so 1.0, 0.5 (the orders disagree: position bias cancels) or
    0.0. Results are cached like any judge's (``cache_size``), so repeated pairs are not judged again.

    Args:
        trl_judge: the object with TRL's ``judge`` method.
        format_prompt: how a prompt reaches the wrapped judge; default :func:`render_simple_chat` (strings as they
            are, message lists rendered as TRL's ``OnlineDPOTrainer`` rendered them for judges).
        on_failure: what a ``-1`` (TRL's "this row failed") means: ``"tie"`` (default; that order counts 0.5) or
            ``"raise"``. ``num_failed`` counts them.
        cache_size: see :class:`~rlhf_pairs.PairwiseJudge`.

    Raises:
        ValueError: from ``compare``, when the wrapped judge returns another number of answers than rows, or an
            answer other than 0, 1 or -1 (naming the judge's class).
    """

    def __init__(
        self,
        trl_judge: Any,  # anything with TRL's judge(prompts, completions, shuffle_order)
        format_prompt: Callable[[Prompt], object] | None = None,
        on_failure: str = "tie",
        cache_size: int = 100_000,
    ) -> None:
        super().__init__(cache_size=cache_size)
        if not callable(getattr(trl_judge, "judge", None)):
            raise TypeError(f"{type(trl_judge).__name__} has no `judge` method: it is not a TRL-style judge")
        if on_failure not in ON_FAILURE:
            raise ValueError(f"`on_failure` must be one of {ON_FAILURE}, got {on_failure!r}")
        self.trl_judge = trl_judge
        self.format_prompt = format_prompt or render_simple_chat
        self.on_failure = on_failure
        self.num_failed = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.trl_judge).__name__})"

    def score_ordered_pairs(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> torch.Tensor:
        """P(first is better) per row from the wrapped judge's index: 1.0 (index 0), 0.0 (index 1), 0.5 (-1)."""
        answers = self.trl_judge.judge(
            [self.format_prompt(p) for p in prompts], [[a, b] for a, b in zip(first, second)], shuffle_order=False
        )
        name = type(self.trl_judge).__name__
        answers = list(answers)
        if len(answers) != len(prompts):
            raise ValueError(f"{name}.judge returned {len(answers)} answers for {len(prompts)} pairs")
        scores = []
        for i, answer in enumerate(answers):
            if isinstance(answer, bool) or answer not in (0, 1, -1):
                raise ValueError(f"{name}.judge returned {answer!r} for row {i}; expected 0, 1 or -1 (failed)")
            if answer == -1:
                if self.on_failure == "raise":
                    raise ValueError(f"{name}.judge failed (-1) on row {i}: {prompts[i]!r:.60}")
                self.num_failed += 1
            scores.append({0: 1.0, 1: 0.0, -1: 0.5}[int(answer)])
        return torch.tensor(scores, dtype=torch.float64)


def as_judge(judge: object) -> SupportsCompare:
    """``judge`` itself when it has ``compare`` (a :class:`~rlhf_pairs.PairwiseJudge` or any compatible object),
    a :class:`TRLJudgeAdapter` around it when it only has TRL's ``judge``. Raises ``TypeError`` otherwise."""
    if callable(getattr(judge, "compare", None)):
        return cast(SupportsCompare, judge)
    if callable(getattr(judge, "judge", None)):
        return TRLJudgeAdapter(judge)
    raise TypeError(
        f"{type(judge).__name__} is not a judge: it needs compare(prompts, responses_a, responses_b) or TRL's "
        "judge(prompts, completions, shuffle_order=True)"
    )
