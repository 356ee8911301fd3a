"""Win rate of one set of completions against another, judged pairwise.

Used by the win-rate callback (during training) and by the iterative loop's evaluation stage (between rounds),
so both report the same number for the same completions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf_pairs.data_utils import Prompt

# The tie rule and the probability check live in ranking (below this module); pair_outcome stays importable from here.
from rlhf_pairs.ranking import SupportsCompare, check_probabilities, pair_outcome


@dataclass(frozen=True)
class WinRate:
    """The outcome of :func:`win_rate`.

    Attributes:
        win_rate: share of prompts where the completion beats the reference; P exactly 0.5 counts as half a win
            (TRL's former ``WinRateCallback`` counted the judge's 0/1 decisions; ours are both orders averaged).
        mean_probability: mean P(completion beats reference), a smoother signal than ``win_rate``.
        num_prompts: how many prompts were judged.
        ci_low, ci_high: the 95% Wilson score interval of ``win_rate`` over ``num_prompts`` prompts: with 8 prompts a
            win rate of 0.625 is anywhere in [0.31, 0.86], i.e. not distinguishable from 0.5.
    """

    win_rate: float
    mean_probability: float
    num_prompts: int
    ci_low: float = 0.0
    ci_high: float = 1.0

    @property
    def different_from_chance(self) -> bool:
        """Whether the 95% interval excludes 0.5."""
        return not self.ci_low <= 0.5 <= self.ci_high


def win_rate(
    judge: SupportsCompare, prompts: Sequence[Prompt], completions: Sequence[str], references: Sequence[str]
) -> WinRate:
    """Judge ``completions[i]`` against ``references[i]`` for ``prompts[i]`` in one ``judge.compare`` call.

    ``judge`` is anything with ``compare(prompts, responses_a, responses_b) -> list[float]``.
    Raises ``ValueError`` when the inputs are empty, (from the judge) their lengths differ, or the judge returns
    anything but one probability in [0, 1] per prompt.
    """
    if not prompts:
        raise ValueError("`prompts` is empty: a win rate needs at least one prompt")
    probabilities = judge.compare(list(prompts), list(completions), list(references))
    return win_rate_from_probabilities(check_probabilities(judge, probabilities, len(prompts)))


def win_rate_from_probabilities(probabilities: Sequence[float]) -> WinRate:
    """The :class:`WinRate` of already judged pairs, P(completion beats reference) each."""
    if not probabilities:
        raise ValueError("no judged pairs: a win rate needs at least one")
    wins = sum(pair_outcome(p) for p in probabilities)
    n = len(probabilities)
    low, high = wilson_interval(wins / n, n)
    return WinRate(win_rate=wins / n, mean_probability=sum(probabilities) / n, num_prompts=n, ci_low=low, ci_high=high)


def wilson_interval(rate: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% for the default ``z``) of a proportion ``rate`` observed over ``n`` trials;
    well behaved at small ``n`` and at rates of 0 or 1, unlike the normal approximation."""
    if n <= 0:
        return 0.0, 1.0
    center = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)
