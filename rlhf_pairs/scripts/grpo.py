"""The ``grpo`` job: train a policy with TRL's ``GRPOTrainer``, rewarded by a pair judge.

Each step samples ``num_generations`` completions per prompt; :class:`~rlhf_pairs.PairwiseRewardFunction`
(``layout="groups"``) scores each one within its group (``ranking_method``: round robin = mean win probability,
knockout = 1 best / 0 worst / 0.5 others) and GRPO normalises the scores per group. Groups that
``per_device_train_batch_size * steps_per_generation`` splits across processes are gathered and ranked whole.

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/grpo.py \
        --config recipes/grpo/pairrm_qwen2.5-0.5b.yaml

Parser: ``TrlParser((OnlineConfig, JudgeArguments, GRPOConfig, ModelConfig))``; LoRA with ``--use_peft true``, vLLM
generation with ``--use_vllm true``.
"""

from __future__ import annotations

import argparse

from rlhf_pairs.configs import JudgeArguments, OnlineConfig

RECIPES = "grpo"
DATACLASSES = (OnlineConfig, JudgeArguments)
LIBRARY_CONFIGS = ("trl.GRPOConfig", "trl.ModelConfig")


def main(script_args: OnlineConfig, judge_args: JudgeArguments, training_args, model_args):
    """Train with the pair judge's reward and save; returns the trainer."""
    from trl import GRPOTrainer

    from rlhf_pairs.trainer.online import train_with_pair_judge

    return train_with_pair_judge(script_args, judge_args, training_args, model_args, GRPOTrainer, layout="groups")


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import GRPOConfig, ModelConfig, TrlParser

    dataclass_types = (*DATACLASSES, GRPOConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "grpo", help="GRPO with pair-judge tournament scores as the reward", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
