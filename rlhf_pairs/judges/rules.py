"""Rule judges: a preference that is known in advance and visible in the text, for demos and tests.

A real judge's preference is what it learned; to see the loop *work* (the policy moving toward the judge), it helps
to have a judge whose preference is a documented rule one can check by eye. These are :class:`RewardJudge` s, so
they plug in anywhere a judge does (``--judge_type rlhf_pairs.judges.rules:ConciseJudge``; the ``judge`` value is
only a name) and rank by sorting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhf_pairs.data_utils import Prompt
from rlhf_pairs.judges.base import RewardJudge


class ConciseJudge(RewardJudge):
    """Prefers the shorter answer: reward = minus the number of words, so P(a better than b) =
    sigmoid((words(b) - words(a)) / temperature), with ``temperature`` 4 words by default (an answer 4 words shorter
    wins with P = 0.73, 12 words shorter with P = 0.95). An empty answer gets no bonus over a one-word one: both
    score -1, since an empty reply is not a concise answer."""

    def __init__(self, temperature: float = 4.0, **kwargs):
        super().__init__(temperature=temperature, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "concise", **kwargs) -> ConciseJudge:
        """``name_or_path`` is only a label (nothing is loaded); ``temperature`` and ``cache_size`` are taken, the
        model options of the jobs (``device``, ``dtype``, ...) are accepted and ignored."""
        options = {key: kwargs[key] for key in ("temperature", "cache_size") if key in kwargs}
        return cls(**options)

    def reward_batch(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        return torch.tensor([-float(max(len(text.split()), 1)) for text in responses], dtype=torch.float64)
