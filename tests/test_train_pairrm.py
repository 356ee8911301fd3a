"""PairRM fine-tuning: both-orders batches, the logistic loss the judge reads, recipes, and a real (tiny) run."""

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from conftest import accuracy, load_script, synthetic_pairs, ultrafeedback_row
from safetensors.torch import load_file
from transformers import TrainingArguments

from rlhf_pairs import PairRMJudge
from rlhf_pairs.configs import PairRMTrainConfig
from rlhf_pairs.testing_utils import build_tiny_pairrm
from rlhf_pairs.trainer.pairrm_trainer import PairRMCollator, PairRMTrainer

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    {"prompt": "hello!", "chosen": "hi!", "rejected": "go away"},
    {
        "prompt": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "Sure?"},
        ],
        "chosen": "Yes.",
        "rejected": "Maybe Lyon.",
    },
]


@pytest.fixture(scope="module")
def small_init_pairrm(tmp_path_factory):
    return build_tiny_pairrm(tmp_path_factory.mktemp("models") / "tiny-pairrm-trainable", initializer_range=0.02)


def test_batches_hold_both_orders_and_the_loss_is_what_the_judge_reads(tiny_pairrm_path, tmp_path):
    judge = PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu")
    collator = PairRMCollator(judge.encoder, judge.tokenizer.pad_token_id)
    batch = collator(PAIRS)
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].tolist() == [1.0, 1.0]
    for i, pair in enumerate(PAIRS):
        for order, (a, b) in enumerate([(pair["chosen"], pair["rejected"]), (pair["rejected"], pair["chosen"])]):
            ids, positions = judge.encoder.encode(pair["prompt"], a, b)
            row = 2 * i + order
            assert batch["input_ids"][row, : len(ids)].tolist() == ids
            assert batch["attention_mask"][row].sum() == len(ids)
            assert [int(batch[k][row]) for k in ("source_positions", "cand1_positions", "cand2_positions")] == list(
                positions
            )

    trainer = PairRMTrainer(
        model=judge.model,
        args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"),
        data_collator=collator,
        processing_class=judge.tokenizer,
    )
    judge.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(judge.model, dict(batch))
    probs = judge.compare([p["prompt"] for p in PAIRS], [p["chosen"] for p in PAIRS], [p["rejected"] for p in PAIRS])
    # -log P(chosen better), P = sigmoid(f(c, r) - f(r, c)), averaged over pairs.
    assert float(loss) == pytest.approx(sum(-math.log(p) for p in probs) / len(probs), rel=1e-5)


def test_every_recipe_key_is_a_field_of_the_parsed_dataclasses():
    known = {f.name for cls in (PairRMTrainConfig, TrainingArguments) for f in fields(cls)}
    for path in sorted((ROOT / "recipes" / "pairrm").glob("*.yaml")):
        keys = set(yaml.safe_load(path.read_text()))
        assert keys <= known, f"{path.name}: unknown keys {keys - known}"
    from rlhf_pairs.scripts.train_pairrm import make_parser

    config, training = make_parser().parse_args_and_config(
        args=[
            "--config",
            str(ROOT / "recipes/pairrm/pairrm-hf.yaml"),
            "--bf16",
            "false",
            "--tf32",
            "false",
            "--use_cpu",
            "true",
        ]
    )
    assert config.model_name_or_path == "llm-blender/PairRM-hf" and (config.source_max_length, config.max_length) == (
        1224,
        2048,
    )
    assert training.learning_rate == 1e-5


def test_recipe_learns_a_synthetic_preference_and_round_trips_as_a_judge(small_init_pairrm, tmp_path):
    train, test = synthetic_pairs(320, seed=0), synthetic_pairs(40, seed=1)
    train[1]["rejected"] = train[1]["chosen"]  # identical responses are dropped
    data = tmp_path / "prefs"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in train))
    prompts, chosen, rejected = ([p[k] for p in test] for k in ("prompt", "chosen", "rejected"))
    accuracy_before = accuracy(
        PairRMJudge.from_pretrained(str(small_init_pairrm), device="cpu").compare(prompts, chosen, rejected)
    )

    out = tmp_path / "out"
    summary = load_script("train_pairrm").main(
        [
            "--config",
            str(ROOT / "recipes/pairrm/tiny-cpu.yaml"),
            "--model_name_or_path",
            str(small_init_pairrm),
            "--dataset_name",
            str(data / "train.jsonl"),
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "true",
        ]
    )
    assert summary["conversion"].startswith("320 rows -> 319 pairs; dropped 1 (identical_responses: 1)")
    assert summary["train_pairs"] == 255 and summary["eval_pairs"] == 64  # eval_size 0.2, split by pair
    assert math.isfinite(summary["train_loss"]) and summary["eval"]["eval_pairwise_accuracy"] > 0.75

    judge = PairRMJudge.from_pretrained(str(out), device="cpu")
    probs = judge.compare(prompts, chosen, rejected)
    assert accuracy(probs) > 0.75 and accuracy(probs) > accuracy_before + 0.2, (accuracy_before, accuracy(probs))
    # PairRM-hf's layout is kept: same keys, same config fields; weights changed.
    start, end = load_file(small_init_pairrm / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(start) == set(end) and any(k.startswith("head_layer.4.") for k in end)
    assert sum(not torch.equal(start[k], end[k]) for k in start) > len(start) // 2
    config = json.loads((out / "config.json").read_text())
    for key in ("n_tasks", "drop_out", "source_prefix_id", "cand1_prefix_id", "cand2_prefix_id", "cand_prefix_id"):
        assert config[key] == json.loads((small_init_pairrm / "config.json").read_text())[key]


def test_ultrafeedback_binarized_format_trains(small_init_pairrm, tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized's columns: a string prompt repeating the user turn, chosen/rejected as
    whole conversations, and `messages` (the chosen conversation). Before: refused as RLHFlow `messages` rows."""
    rows = [
        ultrafeedback_row(p["prompt"], *([{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p[k]}]
                                         for k in ("chosen", "rejected")))
        for p in synthetic_pairs(20, seed=0)
    ]  # fmt: skip
    rows[0]["rejected"][0]["content"] = "a different question"  # RLHFlow's filter: equal context
    data = tmp_path / "ultrafeedback.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = load_script("train_pairrm").main(
        [
            "--config",
            str(ROOT / "recipes/pairrm/tiny-cpu.yaml"),
            "--model_name_or_path",
            str(small_init_pairrm),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--disable_tqdm",
            "true",
        ]
    )
    assert summary["conversion"] == "20 rows -> 19 pairs; dropped 1 (unequal_context: 1)"
    assert summary["train_pairs"] + summary["eval_pairs"] == 19 and math.isfinite(summary["train_loss"])


def test_rlhflow_message_rows_are_refused(small_init_pairrm, tmp_path):
    data = tmp_path / "messages.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "A"}]}))
    with pytest.raises(ValueError, match=r"prompt/chosen/rejected pairs; .*RLHFlow comparison rows"):
        load_script("train_pairrm").main(
            [
                "--config",
                str(ROOT / "recipes/pairrm/tiny-cpu.yaml"),
                "--model_name_or_path",
                str(small_init_pairrm),
                "--dataset_name",
                str(data),
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
