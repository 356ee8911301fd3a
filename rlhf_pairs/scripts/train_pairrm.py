"""``rlhf-pairs train-pairrm``: fine-tune a PairRM (DeBERTa pair ranker) on preference pairs or candidate lists.

    rlhf-pairs train-pairrm --config pairrm-hf --dataset_name my_pairs.jsonl
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/train_pairrm.py \
        --config recipes/pairrm/pairrm-hf.yaml

Features, assumptions and errors: :mod:`rlhf_pairs.trainer.pairrm_trainer`.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from rlhf_pairs.configs import PairRMTrainConfig
from rlhf_pairs.utils.distributed import get_logger

if TYPE_CHECKING:
    from transformers import TrainingArguments
    from trl import ModelConfig

logger = get_logger(__name__)  # main process only (rlhf_pairs.utils.distributed)

RECIPES = "pairrm"
DATACLASSES = (PairRMTrainConfig,)
LIBRARY_CONFIGS = ("transformers.TrainingArguments", "trl.ModelConfig")


def main(config: PairRMTrainConfig, training_args: TrainingArguments, model_args: ModelConfig) -> dict:
    """Fine-tune the PairRM ``model_args.model_name_or_path`` (default ``llm-blender/PairRM-hf``), evaluate and
    save; returns a summary (conversion counts, sources, sampled training pairs, final train loss, final eval
    metrics)."""
    from transformers import AutoTokenizer

    from rlhf_pairs.judges.pairrm import DEFAULT_PAIRRM, DebertaV2PairRM, PairRMEncoder
    from rlhf_pairs.trainer.pairrm_trainer import PairRMCollator, PairRMTrainer, load_sources, sample_pairs
    from rlhf_pairs.utils.models import loading_input, model_init_kwargs

    # ------------------------------------------------------------------ model & tokenizer
    name = model_args.model_name_or_path or DEFAULT_PAIRRM
    init_kwargs = model_init_kwargs(model_args, training_args)
    with loading_input("--model_name_or_path", name):
        tokenizer = AutoTokenizer.from_pretrained(name, **{k: v for k, v in init_kwargs.items() if k != "dtype"})
        model = DebertaV2PairRM.from_pretrained(name, **init_kwargs)
    encoder_kwargs = {"source_max_length": config.source_max_length, "max_length": config.max_length}
    encoder = PairRMEncoder(tokenizer, **encoder_kwargs)

    # ------------------------------------------------------------------ dataset
    sources, eval_sources, stats = load_sources(config, training_args.seed)
    train_rows = sample_pairs(sources, config.pairs_per_source, config.loss_type, training_args.seed)
    eval_pairs = [(s.prompt, *s.best_and_worst()) for s in eval_sources]  # (prompt, better, worse)
    eval_rows = [{"prompt": p, "first": c, "second": r, "label": 1.0} for p, c, r in eval_pairs]
    logger.info(
        "%d training pairs from %d sources (%s loss), %d held-out pairs",
        len(train_rows),
        len(sources),
        config.loss_type,
        len(eval_pairs),
    )

    # ------------------------------------------------------------------ training
    training_args.remove_unused_columns = False  # the collator reads prompt/first/second/label
    if not eval_pairs and training_args.eval_strategy != "no":
        logger.warning("no held-out pairs (set `eval_size` or `dataset_test_split`): evaluation is turned off")
        training_args.eval_strategy = "no"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = PairRMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=PairRMCollator(encoder, pad_id, both_orders=config.loss_type == "both_orders"),
        processing_class=tokenizer,
        eval_pairs=tuple(list(column) for column in zip(*eval_pairs)) if eval_pairs else ([], [], []),
        encoder_kwargs=encoder_kwargs,
        loss_type=config.loss_type,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    summary = {
        "conversion": stats.summary(),
        "train_sources": len(sources),
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_pairs),
        "train_loss": train_result.training_loss,
    }
    if eval_pairs:
        summary["eval"] = trainer.evaluate()

    # ------------------------------------------------------------------ save
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:  # the log history, held-out metrics included
        trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
    trainer.accelerator.wait_for_everyone()
    logger.info(
        "saved to %s: load it with PairRMJudge.from_pretrained(%r)", training_args.output_dir, training_args.output_dir
    )
    return summary


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from transformers import TrainingArguments
    from trl import ModelConfig, TrlParser

    dataclass_types = (*DATACLASSES, TrainingArguments, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("train-pairrm", help="Fine-tune a PairRM", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
