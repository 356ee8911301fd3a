"""rlhf_pairs: RLHF with pairwise preference models, on top of Hugging Face TRL."""

from rlhf_pairs.judges import (
    DebertaV2PairRM,
    PairPreferenceFormatter,
    PairPreferenceJudge,
    PairRMEncoder,
    PairRMJudge,
    PairwiseJudge,
)

__version__ = "0.1.0"

__all__ = [
    "DebertaV2PairRM",
    "PairPreferenceFormatter",
    "PairPreferenceJudge",
    "PairRMEncoder",
    "PairRMJudge",
    "PairwiseJudge",
]
