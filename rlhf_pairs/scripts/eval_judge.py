"""``rlhf-pairs eval``: how good and how biased is a pair judge, on RewardBench or any data in its format.

    rlhf-pairs eval --config pairrm_rewardbench --judge llm-blender/PairRM-hf --output_dir eval/pairrm

Input: any datasets-loadable source with ``prompt`` (str or messages), ``chosen``, ``rejected`` and ``subset``
(default ``allenai/reward-bench``, split ``filtered``). Outputs under ``output_dir``: ``report.json``,
``per_example.jsonl``, ``report.md``, ``sections.png``. The runner, its sharding, guarantees and errors:
:mod:`rlhf_pairs.eval_dataset`; the metrics and RewardBench's rules: :mod:`rlhf_pairs.evaluation`.
"""

from __future__ import annotations

import argparse

from rlhf_pairs.configs import EvalConfig, JudgeArguments
from rlhf_pairs.scripts import RENAMED_JUDGE_OPTIONS

# Options of the previous release, renamed to the names every job shares (still accepted, with a warning).
RENAMED = {"dataset": "dataset_name", "split": "dataset_test_split", **RENAMED_JUDGE_OPTIONS}
RECIPES = "eval"
DATACLASSES = (EvalConfig, JudgeArguments)


def main(config: EvalConfig, judge_args: JudgeArguments) -> dict:
    """Evaluate ``judge_args.judge`` on ``config.dataset_name`` (:func:`rlhf_pairs.eval_dataset.evaluate_dataset`);
    returns the report (every process), with ``pairs_per_second`` and ``output_dir`` added."""
    from rlhf_pairs.eval_dataset import evaluate_dataset

    return evaluate_dataset(config, judge_args)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import TrlParser

    dataclass_types = DATACLASSES
    if subparsers is not None:
        return subparsers.add_parser("eval", help="Evaluate a pair judge", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
