"""``rlhf-pairs train-pairrm``: fine-tune a PairRM (DeBERTa pair ranker) on ``prompt``/``chosen``/``rejected`` pairs.

    rlhf-pairs train-pairrm --config pairrm-hf --dataset_name my_pairs.jsonl
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/train_pairrm.py \
        --config recipes/pairrm/pairrm-hf.yaml

Features, assumptions and errors: :mod:`rlhf_pairs.trainer.pairrm_trainer`.
"""

from __future__ import annotations

import argparse
import logging
import os

from transformers import TrainingArguments

from rlhf_pairs.configs import PairRMTrainConfig
from rlhf_pairs.trainer.pair_pm_data import load_preference_splits
from rlhf_pairs.trainer.pairrm_trainer import PairRMCollator, PairRMTrainer

logger = logging.getLogger(__name__)

RECIPES = "pairrm"


def _rows(pairs) -> list[dict]:
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]


def main(config: PairRMTrainConfig, training_args: TrainingArguments) -> dict:
    """Fine-tune, evaluate and save; returns a summary (conversion counts, final train loss, final eval metrics)."""
    from transformers import AutoTokenizer

    from rlhf_pairs.judges.pairrm import DebertaV2PairRM, PairRMEncoder
    from rlhf_pairs.tokenization import resolve_device_and_dtype

    # ------------------------------------------------------------------ model & tokenizer
    _, dtype = resolve_device_and_dtype("cpu", config.dtype)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    model = DebertaV2PairRM.from_pretrained(config.model_name_or_path, dtype=dtype)
    encoder_kwargs = {"source_max_length": config.source_max_length, "max_length": config.max_length}
    encoder = PairRMEncoder(tokenizer, **encoder_kwargs)

    # ------------------------------------------------------------------ dataset
    pairs, eval_pairs, stats = load_preference_splits(config, training_args.seed, schema="preference", trainer="PairRM")
    logger.info("%d training pairs (both orders per step), %d held-out pairs", len(pairs), len(eval_pairs))

    # ------------------------------------------------------------------ training
    training_args.remove_unused_columns = False  # the collator reads prompt/chosen/rejected
    if not eval_pairs and training_args.eval_strategy != "no":
        logger.warning("no held-out pairs (set `eval_size` or `dataset_test_split`): evaluation is turned off")
        training_args.eval_strategy = "no"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = PairRMTrainer(
        model=model,
        args=training_args,
        train_dataset=_rows(pairs),
        eval_dataset=_rows(eval_pairs) or None,
        data_collator=PairRMCollator(encoder, pad_id),
        processing_class=tokenizer,
        eval_pairs=([p.prompt for p in eval_pairs], [p.chosen for p in eval_pairs], [p.rejected for p in eval_pairs]),
        encoder_kwargs=encoder_kwargs,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    summary = {
        "conversion": stats.summary(),
        "train_pairs": len(pairs),
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
    from trl import TrlParser

    dataclass_types = (PairRMTrainConfig, TrainingArguments)
    if subparsers is not None:
        return subparsers.add_parser("train-pairrm", help="Fine-tune a PairRM", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import run_command

    raise SystemExit(run_command(sys.modules[__name__]))
