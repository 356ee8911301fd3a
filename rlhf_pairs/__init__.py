"""rlhf_pairs: RLHF with pairwise preference models, on top of Hugging Face TRL.

The public names below load on first use (PEP 562), so ``import rlhf_pairs`` and ``rlhf-pairs --help`` do not pay
for torch, transformers and TRL until something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_pairs.utils.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DebertaV2PairRM": "rlhf_pairs.judges",
    "GenerativeJudge": "rlhf_pairs.judges",
    "JudgeTemplate": "rlhf_pairs.judges",
    "OpenAIJudge": "rlhf_pairs.judges",
    "PairPreferenceFormatter": "rlhf_pairs.judges",
    "PairPreferenceJudge": "rlhf_pairs.judges",
    "PairRMEncoder": "rlhf_pairs.judges",
    "PairRMJudge": "rlhf_pairs.judges",
    "PairwiseJudge": "rlhf_pairs.judges",
    "RemoteJudge": "rlhf_pairs.judges",
    "RewardJudge": "rlhf_pairs.judges",
    "RewardModelJudge": "rlhf_pairs.judges",
    "TRLJudgeAdapter": "rlhf_pairs.judges",
    "as_judge": "rlhf_pairs.judges",
    "load_judge": "rlhf_pairs.judges",
    "BestOfNResult": "rlhf_pairs.best_of_n",
    "best_of_n": "rlhf_pairs.best_of_n",
    "RankingResult": "rlhf_pairs.ranking",
    "RankingStats": "rlhf_pairs.ranking",
    "rank_candidates": "rlhf_pairs.ranking",
    "rank_candidates_with_stats": "rlhf_pairs.ranking",
    "PairwiseRewardFunction": "rlhf_pairs.rewards",
    "PairwiseWinRateCallback": "rlhf_pairs.trainer.callbacks",
    "WinRate": "rlhf_pairs.win_rate",
    "win_rate": "rlhf_pairs.win_rate",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from rlhf_pairs.best_of_n import BestOfNResult, best_of_n  # noqa: F401
    from rlhf_pairs.judges import (  # noqa: F401
        DebertaV2PairRM,
        GenerativeJudge,
        JudgeTemplate,
        OpenAIJudge,
        PairPreferenceFormatter,
        PairPreferenceJudge,
        PairRMEncoder,
        PairRMJudge,
        PairwiseJudge,
        RemoteJudge,
        RewardJudge,
        RewardModelJudge,
        TRLJudgeAdapter,
        as_judge,
        load_judge,
    )
    from rlhf_pairs.ranking import RankingResult, RankingStats, rank_candidates, rank_candidates_with_stats  # noqa: F401
    from rlhf_pairs.rewards import PairwiseRewardFunction  # noqa: F401
    from rlhf_pairs.trainer.callbacks import PairwiseWinRateCallback  # noqa: F401
    from rlhf_pairs.win_rate import WinRate, win_rate  # noqa: F401
