"""``rlhf-pairs tiny-models DIR``: tiny random models and a sample input per job, to try every job offline.

Writes ``DIR/pair_lm`` (a tiny Llama-architecture pair preference LM with Llama-3's chat template: a judge, and a
policy), ``DIR/pairrm`` (a tiny PairRM in PairRM-hf's layout), ``DIR/reward_model`` (a tiny Bradley-Terry reward
model, ``LlamaForSequenceClassification`` with one output and Llama-3's chat template: ``--judge_type
reward_model``) and ``DIR/data/`` (the sample inputs shipped in ``rlhf_pairs/data/samples`` and the demo prompts;
the reward model reads the same ones as the other judges: ``candidates.jsonl`` for ``rank``, ``rewardbench.jsonl``
for ``eval``, ``prompts.jsonl`` for ``iterate``, ``online-dpo`` and ``grpo``). The models are random: the commands
run end to end in seconds, the numbers mean nothing. Each job's README (``rlhf_pairs/recipes/<job>/README.md``) has
the offline command.
"""

from __future__ import annotations

import argparse
import shutil
from importlib import resources
from pathlib import Path

RECIPES = "tiny_models"  # no recipes: --config is not used


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    kwargs = {"description": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter}
    if subparsers is not None:
        parser = subparsers.add_parser("tiny-models", help="Tiny random models and sample inputs", **kwargs)
    else:
        parser = argparse.ArgumentParser(prog=prog or "rlhf-pairs tiny-models", **kwargs)
    parser.add_argument("output_dir", help="where pair_lm/, pairrm/, reward_model/ and data/ go")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random weights")
    return parser


def main(args: argparse.Namespace) -> dict:
    """Build the models and copy the samples; returns the paths written."""
    from rlhf_pairs.testing_utils import build_tiny_pair_lm, build_tiny_pairrm, build_tiny_reward_model

    root = Path(args.output_dir)
    paths = {name: root / name for name in ("pair_lm", "pairrm", "reward_model", "data")}
    build_tiny_pair_lm(paths["pair_lm"], seed=args.seed)
    build_tiny_pairrm(paths["pairrm"], seed=args.seed)
    build_tiny_reward_model(paths["reward_model"], seed=args.seed)
    paths["data"].mkdir(parents=True, exist_ok=True)
    data = resources.files("rlhf_pairs.data")
    for source in [*data.joinpath("samples").iterdir(), data.joinpath("demo_prompts.jsonl")]:
        if source.name.endswith(".jsonl"):
            with resources.as_file(source) as path:
                shutil.copyfile(
                    path, paths["data"] / ("prompts.jsonl" if source.name == "demo_prompts.jsonl" else source.name)
                )
    print(f"tiny models in {root}: pair_lm/, pairrm/ and reward_model/; sample inputs in {paths['data']}")
    return {name: str(path) for name, path in paths.items()}


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
