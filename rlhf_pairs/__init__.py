"""rlhf_pairs: RLHF with pairwise preference models, on top of Hugging Face TRL."""

from rlhf_pairs.judges import (
    DebertaV2PairRM,
    PairPreferenceFormatter,
    PairPreferenceJudge,
    PairRMEncoder,
    PairRMJudge,
    PairwiseJudge,
    TRLJudgeAdapter,
    as_judge,
    load_judge,
)
from rlhf_pairs.ranking import RankingResult, RankingStats, rank_candidates, rank_candidates_with_stats
from rlhf_pairs.rewards import PairwiseRewardFunction
from rlhf_pairs.trainer.callbacks import PairwiseWinRateCallback
from rlhf_pairs.win_rate import WinRate, win_rate

__version__ = "0.1.0"

__all__ = [
    "DebertaV2PairRM",
    "PairPreferenceFormatter",
    "PairPreferenceJudge",
    "PairRMEncoder",
    "PairRMJudge",
    "PairwiseJudge",
    "PairwiseRewardFunction",
    "PairwiseWinRateCallback",
    "TRLJudgeAdapter",
    "WinRate",
    "RankingResult",
    "RankingStats",
    "as_judge",
    "load_judge",
    "rank_candidates",
    "rank_candidates_with_stats",
    "win_rate",
]
