"""``rlhf-pairs train-pm``: train a pair preference LM (RLHFlow's recipe) with TRL's ``SFTTrainer``.

    rlhf-pairs train-pm --config llama3-8b-it --accelerate_config zero3 --num_processes 8
    accelerate launch --config_file recipes/accelerate/zero3.yaml scripts/train_pair_pm.py \
        --config recipes/pair_pm/llama3-8b-it.yaml

Features, assumptions and errors: :mod:`rlhf_pairs.trainer.pair_pm_trainer`.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from rlhf_pairs.configs import PairPMConfig
from rlhf_pairs.utils.distributed import get_logger

if TYPE_CHECKING:
    from trl import ModelConfig, SFTConfig

logger = get_logger(__name__)  # main process only (rlhf_pairs.utils.distributed)

RECIPES = "pair_pm"
DATACLASSES = (PairPMConfig,)
LIBRARY_CONFIGS = ("trl.SFTConfig", "trl.ModelConfig")


def tokenized_cache_dir() -> str | None:
    """Where tokenized comparisons are cached: ``rlhf_pairs/`` in the datasets cache (``HF_DATASETS_CACHE``), or
    ``None`` (in memory) when datasets' caching is disabled."""
    import datasets

    return os.path.join(datasets.config.HF_DATASETS_CACHE, "rlhf_pairs") if datasets.is_caching_enabled() else None


def main(script_args: PairPMConfig, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    """Train, evaluate and save; returns a summary (conversion counts, over-long comparisons, training rows, final
    train loss, final eval metrics)."""
    from trl import get_peft_config

    from rlhf_pairs.trainer.pair_pm_data import (
        RenderedContextFormatter,
        apply_overlong,
        comparisons,
        label_tokens_for,
        load_preference_splits,
        pair_context,
        tokenized_dataset,
    )
    from rlhf_pairs.trainer.pair_pm_trainer import (
        PairPreferenceSFTTrainer,
        check_packing,
        end_of_turn_id,
        ensure_pad_token,
        save_merged_lora,
    )
    from rlhf_pairs.utils.models import load_causal_lm, load_tokenizer

    # ------------------------------------------------------------------ model & tokenizer
    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required (e.g. meta-llama/Meta-Llama-3-8B-Instruct)")
    tokenizer = load_tokenizer(model_args, training_args)
    model = load_causal_lm(model_args, training_args)
    pad_token = ensure_pad_token(tokenizer, model)
    eot_id = end_of_turn_id(tokenizer, script_args.eot_token) if script_args.loss_on_eot else None
    label_tokens = label_tokens_for(script_args.label_format, RenderedContextFormatter(tokenizer), eot_id)
    prefix_budget = training_args.max_length - label_tokens.max_length if training_args.max_length else None
    formatter = RenderedContextFormatter(tokenizer, max_length=prefix_budget)
    logger.info(
        "pad token %r (id %d); label format %s: A -> %s, B -> %s",
        pad_token,
        tokenizer.pad_token_id,
        label_tokens.name,
        list(label_tokens.ids["A"]),
        list(label_tokens.ids["B"]),
    )
    check_packing(model, training_args)

    # ------------------------------------------------------------------ dataset
    # The main process of each node loads, converts and tokenizes first, writing the datasets cache; the others then
    # load the tokenized comparisons from it instead of running dataset_num_proc workers each on the same data.
    with training_args.main_process_first(desc="dataset preparation"):
        pairs, eval_pairs, stats = load_preference_splits(script_args, training_args.seed)
        train_comps = comparisons(pairs, formatter, script_args.orders, training_args.seed)
        eval_comps = comparisons(eval_pairs, formatter, "both")
        cache_dir = tokenized_cache_dir()
        num_proc = training_args.dataset_num_proc
        train_dataset = tokenized_dataset(train_comps, formatter, label_tokens, num_proc, cache_dir)
        eval_dataset = (
            tokenized_dataset(eval_comps, formatter, label_tokens, num_proc, cache_dir) if eval_comps else None
        )
        train_dataset, overlong = apply_overlong(train_dataset, script_args.overlong)
        if eval_dataset is not None:  # held out: truncated as the judge truncates, whatever `overlong` says
            eval_dataset, _ = apply_overlong(eval_dataset, "truncate")
    if overlong:
        logger.warning(
            "%d of %d training comparisons exceeded max_length=%s and were %s",
            overlong,
            len(train_comps),
            training_args.max_length,
            "dropped" if script_args.overlong == "drop" else "truncated (oldest context first)",
        )
    if not len(train_dataset):
        raise ValueError(f"every training comparison exceeds max_length={training_args.max_length} (overlong: drop)")
    logger.info(
        "%d training comparisons (%s, %s labels), %d held-out pairs",
        len(train_dataset),
        script_args.orders,
        label_tokens.name,
        len(eval_pairs),
    )

    # ------------------------------------------------------------------ training
    if eval_dataset is None and training_args.eval_strategy != "no":
        logger.warning("no held-out pairs (set `eval_size` or `dataset_test_split`): evaluation is turned off")
        training_args.eval_strategy = "no"
    trainer = PairPreferenceSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        eval_pairs=(
            [pair_context(p, formatter) for p in eval_pairs],
            [p.chosen for p in eval_pairs],
            [p.rejected for p in eval_pairs],
        ),
        judge_max_length=prefix_budget,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    summary = {
        "conversion": stats.summary(),
        "train_comparisons": len(train_dataset),
        "overlong_truncated": overlong if script_args.overlong == "truncate" else 0,
        "overlong_dropped": overlong if script_args.overlong == "drop" else 0,
        "train_sequences": len(trainer.train_dataset),  # packed rows with `packing`, else comparisons
        "eval_pairs": len(eval_pairs),
        "train_loss": train_result.training_loss,
    }
    if eval_dataset is not None:
        summary["eval"] = trainer.evaluate()

    # ------------------------------------------------------------------ save
    if model_args.use_peft:
        adapter_dir = os.path.join(training_args.output_dir, "adapter")
        trainer.save_model(adapter_dir)
        if script_args.merge_lora and trainer.accelerator.is_main_process:
            save_merged_lora(model_args, adapter_dir, training_args.output_dir, training_args)
    else:
        trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:  # the log history, held-out metrics included
        trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
    trainer.accelerator.wait_for_everyone()
    logger.info(
        "saved to %s: load it with PairPreferenceJudge.from_pretrained(%r)",
        training_args.output_dir,
        training_args.output_dir,
    )
    return summary


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import ModelConfig, SFTConfig, TrlParser

    dataclass_types = (*DATACLASSES, SFTConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("train-pm", help="Train a pair preference LM", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
