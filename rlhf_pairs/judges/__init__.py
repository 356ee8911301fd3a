from rlhf_pairs.judges.base import PairwiseJudge, RewardJudge
from rlhf_pairs.judges.loading import JUDGE_TYPES, load_judge
from rlhf_pairs.judges.modeling_pairrm import DebertaV2PairRM
from rlhf_pairs.judges.pair_lm import PairPreferenceFormatter, PairPreferenceJudge
from rlhf_pairs.judges.pairrm import PAIRRM_FORMATS, PairRMEncoder, PairRMJudge
from rlhf_pairs.judges.remote import RemoteJudge, RemoteRewardJudge
from rlhf_pairs.judges.reward_model import RewardModelJudge
from rlhf_pairs.judges.trl_adapter import TRLJudgeAdapter, as_judge

__all__ = [
    "JUDGE_TYPES",
    "PAIRRM_FORMATS",
    "DebertaV2PairRM",
    "PairPreferenceFormatter",
    "PairPreferenceJudge",
    "PairRMEncoder",
    "PairRMJudge",
    "PairwiseJudge",
    "RemoteJudge",
    "RemoteRewardJudge",
    "RewardJudge",
    "RewardModelJudge",
    "TRLJudgeAdapter",
    "as_judge",
    "load_judge",
]
