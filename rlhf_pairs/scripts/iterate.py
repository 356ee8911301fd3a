"""``rlhf-pairs iterate``: iterative DPO / rejection sampling with a pair judge, resumable stage by stage.

    rlhf-pairs tiny-models tiny
    rlhf-pairs iterate --config tiny_cpu --model_name_or_path tiny/pair_lm --judge tiny/pair_lm \
        --dataset_name tiny/data/prompts.jsonl --output_dir tiny/iterate
    accelerate launch --config_file recipes/accelerate/zero3.yaml scripts/iterate.py \
        --config recipes/iterative_dpo/llama3-8b-pair-lm.yaml

The training fields are TRL's ``DPOConfig`` with ``mode: dpo`` and TRL's ``SFTConfig`` with
``mode: rejection_sampling`` (the mode is read from the flags or the ``--config`` YAML before parsing). The loop is
:class:`rlhf_pairs.trainer.iterative.IterativeLoop`. Per-round metrics go to ``<output_dir>/metrics.jsonl`` and to the
trackers named by ``report_to`` (the round is the step).
"""

from __future__ import annotations

import argparse
import json

from rlhf_pairs.configs import IterateConfig, JudgeArguments

# Options of the previous release, renamed to the names every job shares (still accepted, with a warning).
RENAMED = {
    "dataset": "dataset_name",
    "dataset_split": "dataset_train_split",
    "eval_dataset": "eval_dataset_name",
    "eval_split": "dataset_test_split",
    "rank_method": "ranking_method",
}
RECIPES = "iterative_dpo"
DATACLASSES = (IterateConfig, JudgeArguments)
LIBRARY_CONFIGS = ("trl.DPOConfig (trl.SFTConfig with --mode rejection_sampling)", "trl.ModelConfig")
PARSER_READS_ARGV = True  # the training config's class depends on `mode`


def training_mode(argv: list[str] | None) -> str:
    """The ``mode`` that ``argv`` selects: a ``--mode`` flag, else the ``--config`` YAML's ``mode``, else ``dpo``."""
    import yaml

    argv = list(argv or [])
    mode, config = "dpo", None
    for i, arg in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--config":
            config = value
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
    if config:
        with open(config, encoding="utf-8") as f:
            mode = (yaml.safe_load(f) or {}).get("mode", mode)
    for i, arg in enumerate(argv):
        if arg == "--mode" and i + 1 < len(argv):
            mode = argv[i + 1]
        elif arg.startswith("--mode="):
            mode = arg.split("=", 1)[1]
    return mode


def main(script_args: IterateConfig, judge_args: JudgeArguments, training_args, model_args) -> list[dict]:
    """Run every unfinished stage of every round; returns the per-round metrics."""
    from rlhf_pairs.trainer.iterative import run_loop
    from rlhf_pairs.utils.distributed import get_logger

    logger = get_logger(__name__)  # main process only, unless told otherwise
    _, metrics = run_loop(script_args, judge_args, training_args, model_args)
    for row in metrics:
        logger.info("round %s: %s", row["round"], json.dumps({k: v for k, v in row.items() if k != "round"}))
    return metrics


def make_parser(
    subparsers: argparse._SubParsersAction | None = None, prog: str | None = None, argv: list[str] | None = None
):
    """The parser for ``argv``'s mode (see :func:`training_mode`): ``DPOConfig`` or ``SFTConfig`` fields."""
    from trl import DPOConfig, ModelConfig, SFTConfig, TrlParser

    training_config = SFTConfig if training_mode(argv) == "rejection_sampling" else DPOConfig
    dataclass_types = (*DATACLASSES, training_config, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("iterate", help="Iterative DPO with a pair judge", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
