"""Reward functions for TRL's online trainers (``reward_funcs=[...]``), as TRL keeps them in ``trl/rewards``."""

from rlhf_pairs.rewards.pairwise_reward import LAYOUTS, PairwiseRewardFunction

__all__ = ["LAYOUTS", "PairwiseRewardFunction"]
