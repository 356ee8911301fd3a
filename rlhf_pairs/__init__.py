"""rlhf_pairs: RLHF with pairwise preference models, on top of Hugging Face TRL."""

from rlhf_pairs.judges import (
    DebertaV2PairRM,
    PairPreferenceFormatter,
    PairPreferenceJudge,
    PairRMEncoder,
    PairRMJudge,
    PairwiseJudge,
)
from rlhf_pairs.ranking import RankingResult, RankingStats, rank_candidates, rank_candidates_with_stats

__version__ = "0.1.0"

__all__ = [
    "DebertaV2PairRM",
    "PairPreferenceFormatter",
    "PairPreferenceJudge",
    "PairRMEncoder",
    "PairRMJudge",
    "PairwiseJudge",
    "RankingResult",
    "RankingStats",
    "rank_candidates",
    "rank_candidates_with_stats",
]
