"""The ``online_dpo`` job: train a policy with TRL's ``OnlineDPOTrainer``, rewarded by a pair judge.

Each step samples two completions per prompt from the policy, the judge gives each P(it beats the other) through
:class:`~rlhf_pairs.PairwiseRewardFunction` (``layout="pairs"``), and the DPO loss is applied to the
(chosen, rejected) pair: the drop-in for TRL < 1.0's ``OnlineDPOTrainer(judge=PairRMJudge())``.

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/online_dpo.py \
        --config recipes/online_dpo/pairrm_qwen2.5-0.5b.yaml

Parser: ``TrlParser((OnlineConfig, JudgeArguments, OnlineDPOConfig, ModelConfig))``; LoRA with ``--use_peft true``
(``trl.get_peft_config``), vLLM generation with ``--use_vllm true``. OnlineDPO's evaluation loop cannot run (it
feeds raw prompts to the model), so keep ``eval_strategy: "no"`` and measure progress with ``win_rate_prompts``.
"""

from __future__ import annotations

import argparse
import os

from rlhf_pairs.configs import JudgeArguments, OnlineConfig

RECIPES = "online_dpo"
DATACLASSES = (OnlineConfig, JudgeArguments)
LIBRARY_CONFIGS = ("trl.OnlineDPOConfig", "trl.ModelConfig")


def main(script_args: OnlineConfig, judge_args: JudgeArguments, training_args, model_args):
    """Train with the pair judge's reward and save; returns the trainer."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.online_dpo import OnlineDPOTrainer

    from rlhf_pairs.trainer.online import train_with_pair_judge

    return train_with_pair_judge(script_args, judge_args, training_args, model_args, OnlineDPOTrainer, layout="pairs")


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import ModelConfig, TrlParser
    from trl.experimental.online_dpo import OnlineDPOConfig

    dataclass_types = (*DATACLASSES, OnlineDPOConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "online-dpo", help="Online DPO with a pair judge as the reward", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
