"""The judges. The public names below load on first use (PEP 562): ``import rlhf_pairs.judges.loading`` (what the
configs need to check ``judge_type``) imports no torch or transformers; ``from rlhf_pairs.judges import X`` works as
before."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_pairs.utils.lazy import lazy_exports

# public name -> the submodule that defines it (relative to this package)
_EXPORTS = {
    "JUDGE_TYPES": ".loading",
    "load_judge": ".loading",
    "PairwiseJudge": ".base",
    "RewardJudge": ".base",
    "DebertaV2PairRM": ".modeling_pairrm",
    "GenerativeJudge": ".generative",
    "JudgeTemplate": ".templates",
    "OpenAIJudge": ".openai_compatible",
    "PairPreferenceFormatter": ".pair_lm",
    "PairPreferenceJudge": ".pair_lm",
    "PAIRRM_FORMATS": ".pairrm",
    "PairRMEncoder": ".pairrm",
    "PairRMJudge": ".pairrm",
    "RemoteJudge": ".remote",
    "RemoteRewardJudge": ".remote",
    "RewardModelJudge": ".reward_model",
    "TRLJudgeAdapter": ".trl_adapter",
    "as_judge": ".trl_adapter",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from rlhf_pairs.judges.base import PairwiseJudge, RewardJudge  # noqa: F401
    from rlhf_pairs.judges.generative import GenerativeJudge  # noqa: F401
    from rlhf_pairs.judges.loading import JUDGE_TYPES, load_judge  # noqa: F401
    from rlhf_pairs.judges.modeling_pairrm import DebertaV2PairRM  # noqa: F401
    from rlhf_pairs.judges.openai_compatible import OpenAIJudge  # noqa: F401
    from rlhf_pairs.judges.pair_lm import PairPreferenceFormatter, PairPreferenceJudge  # noqa: F401
    from rlhf_pairs.judges.pairrm import PAIRRM_FORMATS, PairRMEncoder, PairRMJudge  # noqa: F401
    from rlhf_pairs.judges.remote import RemoteJudge, RemoteRewardJudge  # noqa: F401
    from rlhf_pairs.judges.reward_model import RewardModelJudge  # noqa: F401
    from rlhf_pairs.judges.templates import JudgeTemplate  # noqa: F401
    from rlhf_pairs.judges.trl_adapter import TRLJudgeAdapter, as_judge  # noqa: F401
