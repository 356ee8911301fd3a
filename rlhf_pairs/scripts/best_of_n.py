"""``rlhf-pairs best-of-n``: sample n responses per prompt from a policy and keep the one a judge ranks best.

    rlhf-pairs best-of-n --config skywork_rm_llama3-8b --dataset_name prompts.jsonl --output best.jsonl
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/best_of_n.py \
        --config recipes/best_of_n/skywork_rm_llama3-8b.yaml --dataset_name prompts.jsonl --output best.jsonl

A reward model (``judge_type: reward_model``) ranks the candidates by its scores, a pair judge by a knockout. The work
is :func:`rlhf_pairs.best_of_n.run_best_of_n`: the ``iterate`` job's sharded generation, then the ``rank`` job's
runner, resumable and identical for any number of processes. The policy is TRL's ``ModelConfig``
(``model_name_or_path``, ``dtype``, ...).
"""

from __future__ import annotations

import argparse

from rlhf_pairs.configs import BestOfNConfig, JudgeArguments

RECIPES = "best_of_n"
DATACLASSES = (BestOfNConfig, JudgeArguments)
LIBRARY_CONFIGS = ("trl.ModelConfig",)


def main(script_args: BestOfNConfig, judge_args: JudgeArguments, model_args) -> dict:
    """Write the best of ``num_candidates`` samples per prompt to ``script_args.output``; returns the summary."""
    from rlhf_pairs.best_of_n import run_best_of_n

    return run_best_of_n(script_args, judge_args, model_args)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import ModelConfig, TrlParser

    dataclass_types = (*DATACLASSES, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "best-of-n", help="Best-of-n sampling ranked by a judge", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
