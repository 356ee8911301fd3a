"""PairRM fine-tuning: both-orders batches, the logistic loss the judge reads, llm-blender's instructgpt loss and pair
sampling, candidate lists, recipes, and real (tiny) runs."""

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
from rlhf_pairs.trainer.pairrm_trainer import (
    CandidateSource,
    PairRMCollator,
    PairRMTrainer,
    candidate_sources,
    sample_pairs,
)

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


def pairs_as_rows(pairs: list[dict]) -> list[dict]:
    """Preference pairs as `sample_pairs` writes them for the default loss: better first, label 1."""
    return [{"prompt": p["prompt"], "first": p["chosen"], "second": p["rejected"], "label": 1.0} for p in pairs]


def train_tiny_pairrm(model, data, output_dir, *extra: str) -> dict:
    """The train-pairrm script's ``main`` with the tiny CPU recipe on ``model`` and ``data``; returns its summary."""
    argv = ["--config", str(ROOT / "recipes/pairrm/tiny-cpu.yaml"), "--model_name_or_path", str(model)]
    return load_script("train_pairrm").main(
        [*argv, "--dataset_name", str(data), "--output_dir", str(output_dir), *extra]
    )


def test_batches_hold_both_orders_and_the_loss_is_what_the_judge_reads(tiny_pairrm_path, tmp_path):
    judge = PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu")
    collator = PairRMCollator(judge.encoder, judge.tokenizer.pad_token_id)
    sources = [CandidateSource(p["prompt"], (p["chosen"], p["rejected"]), (1.0, 0.0)) for p in PAIRS]
    assert sample_pairs(sources, 5) == pairs_as_rows(PAIRS)  # a pair is one pair, better first
    batch = collator(pairs_as_rows(PAIRS))
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


def test_pairs_are_sampled_per_source_without_ties():
    source = CandidateSource("p", tuple("abcdef"), (5.0, 4.0, 4.0, 3.0, 2.0, 1.0))  # b and c tie: 14 pairs
    score = dict(zip(source.responses, source.scores))
    rows = sample_pairs([source] * 20, pairs_per_source=5, loss_type="instructgpt", seed=0)
    assert len(rows) == 100 and rows == sample_pairs([source] * 20, 5, "instructgpt", seed=0)
    assert rows != sample_pairs([source] * 20, 5, "instructgpt", seed=1)
    for start in range(0, 100, 5):
        drawn = {frozenset((r["first"], r["second"])) for r in rows[start : start + 5]}
        assert len(drawn) == 5 and frozenset("bc") not in drawn  # distinct pairs, ties never drawn
    assert all(r["label"] == float(score[r["first"]] > score[r["second"]]) for r in rows)
    assert 30 < sum(r["label"] for r in rows) < 70  # each pair in one random order
    assert len({frozenset((r["first"], r["second"])) for r in rows}) == 14  # every untied pair gets drawn
    # The default loss writes every pair better-first (its collator adds the other order).
    both = sample_pairs([source], pairs_per_source=20)
    assert len(both) == 14 and all(r["label"] == 1.0 and score[r["first"]] > score[r["second"]] for r in both)
    with pytest.raises(ValueError, match="loss_type"):
        sample_pairs([source], 5, "hinge")


def test_candidate_lists_are_filtered_and_deduplicated():
    rows = [
        {"prompt": "q", "responses": ["a", "b", "a", "c"], "rewards": [1, 0, 5, 0.5]},  # kept: "a" once, score 1
        {"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b"], "rewards": [0.2, 0.1]},  # kept
        {"prompt": "q", "responses": ["a", "b"], "rewards": [1, 1]},  # all tied
        {"prompt": "q", "responses": ["a", "a"], "rewards": [1, 0]},  # one distinct response
        {"prompt": "q", "responses": ["a", "b"], "rewards": [1]},  # a score missing
        {"prompt": "q", "responses": ["a", "b"], "rewards": [1, float("nan")]},
        {"prompt": "q", "responses": ["a", " "], "rewards": [1, 0]},  # blank response
        {"prompt": [{"role": "system", "content": "s"}], "responses": ["a", "b"], "rewards": [1, 0]},
    ]
    sources, stats = candidate_sources(rows)
    assert [(s.responses, s.scores) for s in sources] == [(("a", "b", "c"), (1.0, 0.0, 0.5)), (("a", "b"), (0.2, 0.1))]
    assert dict(stats.dropped) == {"no_preference": 2, "bad_scores": 2, "empty_turn": 1, "not_alternating": 1}
    assert sources[0].best_and_worst() == ("a", "b")


def llm_blender_instructgpt_loss(left_pred_scores, right_pred_scores, left_scores, right_scores):
    """llm-blender's `CrossCompareReranker.compute_loss` with `loss_type="instructgpt"` (pair_ranker/ranker.py),
    transcribed: the head's scores of [source, candidate1] and [source, candidate2] from one forward, and the two
    candidates' metric scores."""
    dif_scores = left_scores - right_scores
    left_pred_scores = left_pred_scores * dif_scores.sign()
    right_pred_scores = -right_pred_scores * dif_scores.sign()
    cls_loss = torch.tensor(0.0)
    cls_loss += -torch.log(torch.sigmoid(left_pred_scores + right_pred_scores)).mean()
    return cls_loss


def test_instructgpt_loss_is_llm_blenders_on_a_hand_computed_batch(tiny_pairrm_path, tmp_path):
    judge = PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu")
    model = judge.model.eval()
    sources = [
        CandidateSource("hello!", ("hi!", "go away", "hello there", "hi hi"), (3.0, 1.0, 1.0, 2.0)),  # one tie
        CandidateSource(PAIRS[1]["prompt"], (PAIRS[1]["chosen"], PAIRS[1]["rejected"]), (1.0, 0.0)),
    ]
    rows = sample_pairs(sources, pairs_per_source=10, loss_type="instructgpt", seed=3)
    assert len(rows) == 6 and [r["label"] for r in rows] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # 5 untied + the pair
    collator = PairRMCollator(judge.encoder, judge.tokenizer.pad_token_id, both_orders=False)
    batch = collator(rows)
    assert batch["input_ids"].shape[0] == 6  # one forward per pair, in its drawn order
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    trainer = PairRMTrainer(model=model, args=args, data_collator=collator, loss_type="instructgpt")
    score = {(i, r): s for i, src in enumerate(sources) for r, s in zip(src.responses, src.scores)}
    origin = [0] * 5 + [1]
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, dict(batch)))
        # By hand: f(a, b) as the judge scores one order, the sign of the score difference.
        f = judge.score_ordered_pairs(
            [r["prompt"] for r in rows], [r["first"] for r in rows], [r["second"] for r in rows]
        )
        signs = torch.tensor(
            [1.0 if score[o, r["first"]] > score[o, r["second"]] else -1.0 for o, r in zip(origin, rows)]
        )
        by_hand = float(-torch.nn.functional.logsigmoid(signs * f).mean())
        # llm-blender's own formula on the head's two scores and the candidates' scores.
        hidden = model.pretrained_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden, at = hidden.last_hidden_state, torch.arange(6)
        source = hidden[at, batch["source_positions"]]
        left = model.head_layer(torch.cat([source, hidden[at, batch["cand1_positions"]]], dim=-1))
        right = model.head_layer(torch.cat([source, hidden[at, batch["cand2_positions"]]], dim=-1))
        left_scores = torch.tensor([[score[o, r["first"]]] for o, r in zip(origin, rows)])
        right_scores = torch.tensor([[score[o, r["second"]]] for o, r in zip(origin, rows)])
        blender = float(llm_blender_instructgpt_loss(left, right, left_scores, right_scores))
        both_orders = PairRMTrainer(model=model, args=args, loss_type="both_orders").compute_loss(
            model, dict(PairRMCollator(judge.encoder, judge.tokenizer.pad_token_id)(rows))
        )
    assert loss == pytest.approx(by_hand, rel=1e-5) and loss == pytest.approx(blender, rel=1e-5)
    assert abs(loss - float(both_orders)) > 1e-3  # a different objective on the same pairs


def test_every_recipe_key_is_a_field_of_the_parsed_dataclasses():
    from trl import ModelConfig

    known = {f.name for cls in (PairRMTrainConfig, TrainingArguments, ModelConfig) for f in fields(cls)}
    for path in sorted((ROOT / "recipes" / "pairrm").glob("*.yaml")):
        keys = set(yaml.safe_load(path.read_text()))
        assert keys <= known, f"{path.name}: unknown keys {keys - known}"
    from rlhf_pairs.scripts.train_pairrm import make_parser

    config, training, model = make_parser().parse_args_and_config(
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
    assert (model.model_name_or_path, model.dtype) == ("llm-blender/PairRM-hf", "float32")  # TRL's ModelConfig
    assert (config.source_max_length, config.max_length) == (1224, 2048)
    assert training.learning_rate == 1e-5
    assert (config.loss_type, config.pairs_per_source) == ("both_orders", 5)


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
    summary = train_tiny_pairrm(small_init_pairrm, data / "train.jsonl", out, "--disable_tqdm", "true")
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
    summary = train_tiny_pairrm(small_init_pairrm, data, tmp_path / "out", "--max_steps", "2", "--disable_tqdm", "true")
    assert summary["conversion"] == "20 rows -> 19 pairs; dropped 1 (unequal_context: 1)"
    assert summary["train_pairs"] + summary["eval_pairs"] == 19 and math.isfinite(summary["train_loss"])


def test_rlhflow_message_rows_are_refused(small_init_pairrm, tmp_path):
    data = tmp_path / "messages.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "A"}]}))
    with pytest.raises(ValueError, match=r"prompt/chosen/rejected pairs; .*RLHFlow comparison rows"):
        train_tiny_pairrm(small_init_pairrm, data, tmp_path / "o")


def test_candidate_lists_train_with_llm_blenders_loss_and_sampling(small_init_pairrm, tmp_path):
    """The rank job's output (prompt, responses, rewards) trains PairRM with `loss_type: instructgpt`: up to
    `pairs_per_source` untied pairs per prompt, one random order each; held out by best vs worst."""
    rows = []
    for p in synthetic_pairs(40, seed=0):
        responses = [p["rejected"], "the lazy dog", p["chosen"], p["chosen"]]  # a repeat, kept once
        rows.append({"prompt": p["prompt"], "responses": responses, "rewards": [0.0, 0.5, 1.0, 1.0]})
    rows[0]["rewards"] = [1.0] * 4  # all tied: no preference
    data = tmp_path / "ranked.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train_tiny_pairrm(
        small_init_pairrm, data, tmp_path / "out",
        "--loss_type", "instructgpt", "--pairs_per_source", "2", "--max_steps", "2", "--disable_tqdm", "true",
    )  # fmt: skip
    assert summary["conversion"] == "40 rows -> 39 pairs; dropped 1 (no_preference: 1)"
    assert (summary["train_sources"], summary["eval_pairs"]) == (31, 8)  # eval_size 0.2 of 39 sources
    assert summary["train_pairs"] == 62 and math.isfinite(summary["train_loss"])  # 2 of each source's 3 pairs
    assert 0.0 <= summary["eval"]["eval_pairwise_accuracy"] <= 1.0
