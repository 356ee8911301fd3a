"""``rlhf-pairs rank``: rank candidate responses per prompt with a pair judge, sharded over processes, resumable.

    rlhf-pairs rank --config pair_lm_knockout --dataset_name candidates.jsonl --output ranked.jsonl
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/rank.py \
        --config recipes/rank/pair_lm_knockout.yaml --dataset_name candidates.jsonl --output ranked.jsonl

The work is :func:`rlhf_pairs.rank_dataset.rank_dataset` (also used by the ``iterate`` job).
"""

from __future__ import annotations

import argparse

from rlhf_pairs.configs import JudgeArguments, RankConfig
from rlhf_pairs.scripts import RENAMED_JUDGE_OPTIONS

# Options of the previous release, renamed to the names every job shares (still accepted, with a warning).
RENAMED = {
    "dataset": "dataset_name",
    "split": "dataset_train_split",
    "method": "ranking_method",
    **RENAMED_JUDGE_OPTIONS,
}
RECIPES = "rank"
DATACLASSES = (RankConfig, JudgeArguments)


def main(script_args: RankConfig, judge_args: JudgeArguments) -> dict:
    """Rank ``script_args.dataset_name`` into ``script_args.output``; returns the summary."""
    from rlhf_pairs.rank_dataset import rank_dataset

    return rank_dataset(script_args, judge_args)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import TrlParser

    dataclass_types = DATACLASSES
    if subparsers is not None:
        return subparsers.add_parser("rank", help="Rank candidates with a pair judge", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
