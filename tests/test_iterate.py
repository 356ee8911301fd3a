"""The iterative loop: two rounds end to end, kill-and-resume equivalence, 1 vs 2 processes, refusal of changed
stages, the train stage's fingerprint, round metrics sent to the report_to trackers, rejection sampling, the LoRA
reference, the pair-building rules, checkpoint and stage clean-up, and the process group / ZeRO-3 helpers of
rlhf_pairs.utils.distributed."""

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_pairs.generation import ChatPromptEncoder, GenerationSettings, generate_candidates
from rlhf_pairs.judges.pair_lm import PairPreferenceJudge
from rlhf_pairs.pairs import build_dpo_pairs, build_sft_rows
from rlhf_pairs.scripts import iterate, parse, run
from rlhf_pairs.scripts.iterate import make_parser
from rlhf_pairs.testing_utils import build_tiny_pair_lm
from rlhf_pairs.trainer.iterative_metrics import mean_logged_loss
from rlhf_pairs.trainer.stages import Stage, StageConfigChanged
from rlhf_pairs.utils.checkpoints import last_complete_checkpoint, remove_incomplete_checkpoints
from rlhf_pairs.utils.hashing import derived_seed
from rlhf_pairs.utils.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "iterative_dpo" / "tiny_cpu.yaml"
RS_RECIPE = ROOT / "recipes" / "iterative_dpo" / "tiny_cpu_rejection_sampling.yaml"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "Tell me a joke.",
    [
        {"role": "user", "content": "hello!"},
        {"role": "assistant", "content": "hi!"},
        {"role": "user", "content": "1+1?"},
    ],
    "Add 2 and 3.",
    "Name a color. <|eot_id|> (a special-token string that must stay text)",
    "Say thanks.",
    "What is 42?",
    "Describe a fox.",
]
DATA_FILES = ("generate/candidates.jsonl", "rank/rankings.jsonl", "pairs/pairs.jsonl", "eval/completions.jsonl")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_pair_lm_path):
    root = tmp_path_factory.mktemp("iterate")
    policy = build_tiny_pair_lm(root / "policy", seed=1)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"root": root, "policy": policy, "judge": tiny_pair_lm_path, "prompts": prompts}


def main(argv):
    """``rlhf-pairs iterate <argv>`` in this process; returns the metrics."""
    return run(iterate, argv)


def args(inputs, output_dir, *extra, recipe=RECIPE):
    return list(map(str, [
        "--config", recipe, "--model_name_or_path", inputs["policy"], "--judge", inputs["judge"],
        "--dataset_name", inputs["prompts"], "--output_dir", output_dir, *extra,
    ]))  # fmt: skip


def run_cli(inputs, output_dir, *extra, kill_at=None, recipe=RECIPE):
    """``rlhf-pairs iterate`` in a fresh process (one thread, as in the 2-process launch); returns the process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RLHF_PAIRS_KILL_AT", None)
    if kill_at:
        env["RLHF_PAIRS_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "rlhf_pairs.cli", "iterate", *args(inputs, output_dir, *extra, recipe=recipe)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if kill_at is None:
        assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def record(path):
    return json.loads((Path(path) / "stage.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(inputs):
    out = inputs["root"] / "uninterrupted"
    run_cli(inputs, out)
    return out


def test_two_rounds_end_to_end(inputs, uninterrupted):
    out = uninterrupted
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [1, 2]
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    judge = PairPreferenceJudge.from_pretrained(str(inputs["judge"]))
    for k, m in zip((1, 2), metrics):
        rnd = out / f"round_{k}"
        rankings = read_jsonl(rnd / "rank" / "rankings.jsonl")
        pairs = read_jsonl(rnd / "pairs" / "pairs.jsonl")
        # 10 prompts, 2 held out for eval, 4 per round: round k ranks prompts 4(k-1)..4k-1.
        assert [r["prompt"] for r in rankings] == PROMPTS[4 * (k - 1) : 4 * k]
        assert all(len(r["responses"]) == 4 for r in rankings)
        # Pairs follow the ranking: chosen = best, rejected = worst, prompt as messages.
        assert len(pairs) == m["pairs/kept"] == 4
        for pair, ranked in zip(pairs, rankings):
            assert pair["chosen"] == [{"role": "assistant", "content": ranked["responses"][ranked["best"]]}]
            assert pair["rejected"] == [{"role": "assistant", "content": ranked["responses"][ranked["worst"]]}]
            assert pair["prompt"][-1]["role"] == "user"
        # Knockout over 4: 3 matches + 1 for the worst, + 1 when best and worst never met (for the margin).
        assert all(r["num_comparisons"] in (4, 5) for r in rankings)
        margins = judge.compare(
            [r["prompt"] for r in rankings],
            [r["responses"][r["best"]] for r in rankings],
            [r["responses"][r["worst"]] for r in rankings],
        )
        assert [r["margin"] for r in rankings] == pytest.approx(margins, abs=1e-6)
        # The win rate is the judge's verdict on the stored completions.
        completions = read_jsonl(rnd / "eval" / "completions.jsonl")
        probs = judge.compare([c["prompt"] for c in completions], [c["new"] for c in completions],
                              [c["previous"] for c in completions])  # fmt: skip
        assert [c["p_new_better"] for c in completions] == pytest.approx(probs, abs=1e-6)
        expected = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in probs) / len(probs)
        assert m["eval/win_rate"] == pytest.approx(expected)
        assert m["train/train_loss"] == m["train/train_loss"]  # finite, not NaN
        assert 0.0 < m["train/train_loss"] < 10.0
    # Round 2 trains from round 1's model, the reference stays the initial policy.
    summary = record(out / "round_2" / "train")["summary"]
    assert summary["policy"] == str(out / "round_1" / "train")
    assert summary["reference"] == str(inputs["policy"])
    w0, w1, w2 = weights(inputs["policy"]), weights(out / "round_1" / "train"), weights(out / "round_2" / "train")
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    # Round 2's candidates are round 1's model sampling with the chunk's derived seed.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "round_1" / "train")
    tokenizer = AutoTokenizer.from_pretrained(out / "round_1" / "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = GenerationSettings(num_candidates=4, max_new_tokens=8, temperature=1.0, batch_size=4)
        expected, _ = generate_candidates(model, tokenizer, PROMPTS[4:6], settings, derived_seed(0, 2, "candidates", 0))
    finally:
        torch.set_num_threads(threads)
    candidates = read_jsonl(out / "round_2" / "generate" / "candidates.jsonl")
    assert [c["responses"] for c in candidates[:2]] == expected


def test_kill_and_resume_equals_an_uninterrupted_run(inputs, uninterrupted):
    out = inputs["root"] / "resumed"
    killed = run_cli(inputs, out, kill_at="round_2/rank:shard#1")  # SIGKILL after the first ranking shard
    assert killed.returncode == -9
    assert (out / "round_1" / "eval" / "DONE").exists() and not (out / "round_2" / "rank").exists()
    finished_round_1 = {p: p.stat().st_mtime_ns for p in (out / "round_1").glob("*/stage.json")}
    killed = run_cli(inputs, out, kill_at="round_2/train:step#2")  # after checkpoint-1 of round 2's training
    assert killed.returncode == -9
    assert (out / "round_2" / "train.partial" / "checkpoint-1").is_dir()
    # What a kill while saving checkpoint-2 leaves (no trainer_state.json yet): must be skipped, not resumed from.
    half_written = out / "round_2" / "train.partial" / "checkpoint-2"
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"truncated")
    # What a kill between a finished stage's commit and its clean-up leaves: must be removed on the next run.
    (out / "round_1" / "rank.partial").mkdir()
    (out / "round_1" / "rank.partial" / "rankings-00000.jsonl").write_text("{}\n")
    done = run_cli(inputs, out)
    for stage in ("generate", "rank", "pairs", "train", "eval"):
        assert f"round_1/{stage}: finished earlier, reused" in done.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "round_1").glob("*/stage.json")} == finished_round_1
    assert record(out / "round_2" / "train")["summary"]["resumed_from"] == "checkpoint-1"
    # metrics.jsonl holds the same numbers (losses, pairs kept, margins, win rate) as the uninterrupted run's.
    resumed, reference = read_jsonl(out / "metrics.jsonl"), read_jsonl(uninterrupted / "metrics.jsonl")
    assert [row.keys() for row in resumed] == [row.keys() for row in reference]
    run_specific = {"train/resumed_from", "train/policy", "train/reference"}  # paths under each run's output_dir
    for a, b in zip(resumed, reference):
        for key in a.keys() - run_specific:
            if isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], abs=1e-6), key
            else:
                assert a[key] == b[key], key
    assert resumed[1]["train/train_loss"] is not None and resumed[1]["eval/win_rate"] is not None
    for k in (1, 2):
        for name in DATA_FILES:
            assert (out / f"round_{k}" / name).read_bytes() == (uninterrupted / f"round_{k}" / name).read_bytes()
        a, b = weights(out / f"round_{k}" / "train"), weights(uninterrupted / f"round_{k}" / "train")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert not list(out.glob("round_*/*.partial")) and not list(out.glob("round_*/.*"))


def test_lora_reference_is_the_initial_policy_in_round_2(inputs, tmp_path):
    """With LoRA, the adapter-disabled policy is round k-1's merged model; from round 2 on the initial policy must be
    loaded as the reference. At step 1 the fresh adapter is a no-op, so the first DPO loss is exactly ln 2 iff the
    reference equals the policy the round starts from."""
    base = ("--num_eval_prompts", "0", "--use_peft", "true", "--learning_rate", "0.05")
    main(args(inputs, tmp_path, *base))
    first_losses = []
    for k in (1, 2):
        history = json.loads((tmp_path / f"round_{k}" / "train" / "log_history.json").read_text())
        first_losses.append(next(h["loss"] for h in history if "loss" in h))
    assert first_losses[0] == pytest.approx(math.log(2), abs=1e-6)  # round 1: reference = start = initial
    w0, w1 = weights(inputs["policy"]), weights(tmp_path / "round_1" / "train")
    assert any(not torch.equal(w0[key], w1[key]) for key in w0)  # round 1 moved the policy
    assert abs(first_losses[1] - math.log(2)) > 1e-3  # round 2: reference = initial != round 1's model
    summary = record(tmp_path / "round_2" / "train")["summary"]
    assert summary["reference"] == str(inputs["policy"]) and summary["policy"] == str(tmp_path / "round_1" / "train")
    assert math.isfinite(summary["train_loss"])


def test_two_processes_give_the_same_pairs(inputs, uninterrupted, launch_two_processes):
    out = inputs["root"] / "two_processes"
    output = launch_two_processes("iterate.py", args(inputs, out, "--rounds", "1"), cwd=inputs["root"])
    assert "2 process(es)" in output
    for name in DATA_FILES[:3]:
        assert (out / "round_1" / name).read_bytes() == (uninterrupted / "round_1" / name).read_bytes()
    assert (out / "round_1" / "train" / "DONE").exists() and (out / "round_1" / "eval" / "DONE").exists()


def test_changed_config_of_a_finished_stage_is_refused_then_redone(inputs, tmp_path):
    base = ("--rounds", "1", "--num_eval_prompts", "0")
    main(args(inputs, tmp_path, *base))
    candidates = tmp_path / "round_1" / "generate" / "candidates.jsonl"
    generated = candidates.stat().st_mtime_ns
    with pytest.raises(
        StageConfigChanged, match=r"round_1/rank .*changed: judge_temperature \(1\.0 -> 2\.0\)\);.*--redo"
    ):
        main(args(inputs, tmp_path, *base, "--judge_temperature", "2.0"))
    main(args(inputs, tmp_path, *base, "--judge_temperature", "2.0", "--redo", "true"))
    assert candidates.stat().st_mtime_ns == generated  # generation did not depend on the judge: kept
    assert record(tmp_path / "round_1" / "rank")["fingerprint"]["judge_temperature"] == 2.0
    assert (
        record(tmp_path / "round_1" / "train")["fingerprint"]["pairs"]
        == Stage(tmp_path, 1, "pairs", record(tmp_path / "round_1" / "pairs")["fingerprint"]).digest
    )


def test_train_fingerprint_holds_what_changes_the_result():
    """A field a future release adds with its default must not make finished runs refuse to resume; result fields
    change the fingerprint, logging and saving fields do not."""
    from trl import DPOConfig

    from rlhf_pairs.trainer.iterative_plan import training_fingerprint

    base = {"output_dir": "runs/a", "use_cpu": True, "bf16": False, "seed": 0, "learning_rate": 1e-3, "beta": 0.1}
    fingerprint = training_fingerprint(DPOConfig(**base))
    assert fingerprint["learning_rate"] == 1e-3 and "beta" not in fingerprint  # 0.1 is DPOConfig's default
    future = dataclasses.make_dataclass(
        "FutureDPOConfig", [("future_option", int, dataclasses.field(default=3))], bases=(DPOConfig,)
    )
    assert training_fingerprint(future(**base)) == fingerprint
    assert training_fingerprint(future(**base, future_option=4)) == {**fingerprint, "future_option": 4}
    for result in ({"learning_rate": 2e-3}, {"beta": 0.2}):
        assert training_fingerprint(DPOConfig(**{**base, **result})) != fingerprint, result
    for logging in ({"logging_steps": 7}, {"report_to": "tensorboard"}, {"output_dir": "runs/b"}, {"save_steps": 3}):
        assert training_fingerprint(DPOConfig(**{**base, **logging})) == fingerprint, logging


class RecordingTracker:
    """An accelerate tracker (registered under the name ``recording``) that records its calls."""

    name = "recording"
    requires_logging_directory = False
    calls: list = []

    def __init__(self, project_name, **kwargs):
        self.calls.append(("init", project_name))

    def start(self):
        self.calls.append(("start",))

    def store_init_configuration(self, values):
        self.calls.append(("config", values))

    def log(self, values, step=None, **kwargs):
        self.calls.append(("log", step, values))

    def finish(self):
        self.calls.append(("finish",))


def finished_run_without(uninterrupted, tmp_path, *stages):
    """A copy of the uninterrupted run without round 2's ``stages``: round 1 finished earlier, round 2 finishes now."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    for stage in stages:
        shutil.rmtree(out / "round_2" / stage)
    return out


def test_round_metrics_go_to_the_report_to_trackers(inputs, uninterrupted, tmp_path, monkeypatch):
    from accelerate import tracking

    from rlhf_pairs.trainer.iterative_metrics import start_trackers

    monkeypatch.setitem(tracking.LOGGER_TYPE_TO_CLASS, "recording", RecordingTracker)
    monkeypatch.setattr(RecordingTracker, "calls", [])
    out = finished_run_without(uninterrupted, tmp_path, "eval")
    main(args(inputs, out, "--report_to", "recording", "--project", "iterate-test"))
    calls, metrics = RecordingTracker.calls, read_jsonl(out / "metrics.jsonl")
    assert [c[0] for c in calls] == ["init", "start", "config", "log", "log", "finish"]
    assert calls[0] == ("init", "iterate-test") and calls[2][1]["num_candidates"] == 4
    logged = [c[1:] for c in calls if c[0] == "log"]
    assert [step for step, _ in logged] == [1, 2]  # the round is the step; round 1 (finished earlier) first
    for (step, values), row in zip(logged, metrics):
        # Exactly the row's numbers: no paths (train/policy), no None (train/resumed_from), not the round.
        assert step == row["round"] and "train/policy" not in values and "train/resumed_from" not in values
        assert values == {k: v for k, v in row.items() if k != "round" and type(v) in (int, float)}
        assert values["eval/win_rate"] == row["eval/win_rate"] and values["pairs/kept"] == 4
    # No tracker for `none` or an empty list; names accelerate has no tracker for are skipped.
    for report_to in ("none", [], ["azure_ml"]):
        assert start_trackers(report_to, "p", tmp_path / "runs", {}) == []


def test_round_metrics_and_training_curves_in_tensorboard(inputs, uninterrupted, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = finished_run_without(uninterrupted, tmp_path, "train", "eval")
    main(args(inputs, out, "--report_to", "tensorboard", "--project", "rounds"))
    rounds = EventAccumulator(str(out / "runs" / "rounds"))
    rounds.Reload()
    metrics = read_jsonl(out / "metrics.jsonl")
    for key in ("eval/win_rate", "pairs/kept", "train/train_loss"):
        scalars = rounds.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([row[key] for row in metrics], rel=1e-6)
    # The trainer's own per-step curves of round 2 are kept with the model (train.partial/ is removed).
    (trainer_run,) = (out / "round_2" / "train" / "runs").iterdir()
    steps = EventAccumulator(str(trainer_run))
    steps.Reload()
    assert [s.step for s in steps.Scalars("train/loss")] == list(range(1, metrics[1]["train/steps"] + 1))


def test_rejection_sampling_trains_on_the_best_candidates(inputs, tmp_path):
    main(args(inputs, tmp_path, "--rounds", "1", "--num_eval_prompts", "0", recipe=RS_RECIPE))
    rankings = read_jsonl(tmp_path / "round_1" / "rank" / "rankings.jsonl")
    sft = read_jsonl(tmp_path / "round_1" / "pairs" / "sft.jsonl")
    assert [row["completion"][0]["content"] for row in sft] == [r["responses"][r["best"]] for r in rankings]
    summary = record(tmp_path / "round_1" / "train")["summary"]
    assert summary["rows"] == 4 and summary["reference"] is None and summary["steps"] >= 1
    before, after = weights(inputs["policy"]), weights(tmp_path / "round_1" / "train")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(t).all() for t in after.values())


def test_bad_configs_name_the_problem(inputs, tmp_path):
    with pytest.raises(ValueError, match="prompts_per_round"):
        main(args(inputs, tmp_path, "--rounds", "3"))  # 8 training prompts, 3 x 4 needed
    with pytest.raises(ValueError, match="pair_strategy"):
        main(args(inputs, tmp_path, "--pair_strategy", "best_of"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: `prompt` must alternate user/assistant turns"):
        main(args(inputs, tmp_path, "--dataset_name", bad, "--num_eval_prompts", "0", "--prompts_per_round", "1"))
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"question": "no prompt"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: no 'prompt' column \(the row has \['question'\]\)"):
        main(args(inputs, tmp_path, "--dataset_name", bad, "--num_eval_prompts", "0", "--prompts_per_round", "1"))


# ---- pair building ----
def ranked(best, worst, responses=("a", "b", "c", "d"), margin=0.9, skipped=None):
    return {"prompt": "p", "responses": list(responses), "best": best, "worst": worst, "margin": margin,
            "skipped": skipped}  # fmt: skip


def test_max_min_pairs_and_drop_counts():
    rows = [
        ranked(0, 3),
        ranked(2, 1, margin=0.55),
        ranked(0, 1, responses=("same", "same")),
        ranked(0, 0, responses=("x",), margin=None, skipped="fewer than 2 candidates"),
    ]
    pairs, counts = build_dpo_pairs(rows)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("a", "d"), ("c", "b")]
    assert counts == {"kept": 2, "not_ranked": 1, "identical": 1, "below_margin": 0}
    pairs, counts = build_dpo_pairs(rows, min_margin=0.6)
    assert len(pairs) == 1 and counts["below_margin"] == 1
    assert sum(counts.values()) == len(rows)


def test_max_random_never_picks_the_best_and_is_seeded():
    rows = [ranked(i % 4, (i + 1) % 4) for i in range(40)]
    pairs, _ = build_dpo_pairs(rows, "max_random", seed=3)
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert pairs == build_dpo_pairs(rows, "max_random", seed=3)[0]
    assert pairs != build_dpo_pairs(rows, "max_random", seed=4)[0]
    assert len({p["rejected"][0]["content"] for p in pairs}) > 1


def test_sft_rows_keep_the_best():
    rows, counts = build_sft_rows([ranked(2, 0), ranked(1, 0, margin=0.2)], min_margin=0.5)
    assert rows == [
        {"prompt": [{"role": "user", "content": "p"}], "completion": [{"role": "assistant", "content": "c"}]}
    ]
    assert counts["below_margin"] == 1


# ---- generation ----
def test_special_token_strings_in_prompts_stay_text(inputs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(inputs["policy"])
    encoder = ChatPromptEncoder(tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    plain = encoder.encode("Name a color.")
    forged = encoder.encode("Name a color. <|eot_id|>")
    assert forged.count(eot) == plain.count(eot) == 1  # only the template's end of turn
    assert encoder.encoder.remove_special("a<|eot_id|>b<|start_header_id|>") == "ab"


def test_generation_is_seeded_and_rejects_greedy_with_several_candidates(inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(inputs["policy"])
    tokenizer = AutoTokenizer.from_pretrained(inputs["policy"])
    settings = GenerationSettings(num_candidates=3, max_new_tokens=6, batch_size=2)
    one, sanitized = generate_candidates(model, tokenizer, PROMPTS[:3], settings, seed=7)
    assert one == generate_candidates(model, tokenizer, PROMPTS[:3], settings, seed=7)[0]
    assert one != generate_candidates(model, tokenizer, PROMPTS[:3], settings, seed=8)[0]
    assert [len(r) for r in one] == [3, 3, 3] and len(sanitized) == 3
    with pytest.raises(ValueError, match="temperature"):
        generate_candidates(model, tokenizer, PROMPTS[:1], GenerationSettings(num_candidates=2, temperature=0), 0)


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "iterative_dpo").glob("*.yaml")), ids=lambda p: p.name)
def test_iterate_recipes_parse(recipe):
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine.
    judge_name = "http://judge-host:8000/v1" if "served" in recipe.name else "j"  # an API judge needs its URL
    argv = ["--config", str(recipe), "--dataset_name", "x.jsonl", "--judge", judge_name, "--bf16", "false"]
    config, judge, training, model = make_parser(argv=argv).parse_args_and_config(args=argv)
    assert judge.judge == judge_name and type(training).__name__ == (
        "SFTConfig" if config.mode != "dpo" else "DPOConfig"
    )
    assert config.rounds >= 1 and training.learning_rate > 0 and config.num_candidates >= 2
    if recipe.name.startswith("llama3"):
        assert (model.model_name_or_path, training.learning_rate, training.beta) == ("RLHFlow/LLaMA3-SFT", 5e-7, 0.1)
        assert training.per_device_train_batch_size * training.gradient_accumulation_steps * 8 == 128


# ---- resume helpers ----
def test_incomplete_checkpoints_are_skipped_and_removed(tmp_path):
    for step, complete in ((1, True), (2, True), (10, False), (3, False)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x")
        if complete:
            (path / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()  # not a step: ignored
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")  # not checkpoint-10 (newest)
    remove_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-final"]
    assert last_complete_checkpoint(tmp_path / "checkpoint-final") is None


def test_mean_logged_loss_weights_each_log_by_its_steps():
    history = [{"loss": 1.0, "step": 2}, {"eval_loss": 9.0, "step": 2}, {"loss": 4.0, "step": 3}, {"train_loss": 0.0}]
    assert mean_logged_loss(history) == pytest.approx((1.0 * 2 + 4.0) / 3)
    assert mean_logged_loss([{"train_loss": 0.5, "step": 3}]) is None


def test_a_kill_after_commit_leaves_partial_work_that_the_next_run_discards(tmp_path):
    script = (
        "import sys\n"
        "from rlhf_pairs.utils.faults import scope\n"
        "from rlhf_pairs.trainer.stages import Stage\n"
        "stage = Stage(sys.argv[1], 1, 'rank', {'x': 1})\n"
        "(stage.begin_partial() / 'shard-0.jsonl').write_text('{}')\n"
        "with scope('round_1/rank'):\n"
        "    stage.commit(stage.staging_dir(), {'ranked': 1})\n"
    )
    env = {**os.environ, "RLHF_PAIRS_KILL_AT": "round_1/rank:committed"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    stage = Stage(tmp_path, 1, "rank", {"x": 1})
    assert stage.check() and (stage.partial / "shard-0.jsonl").exists()  # finished, with leftovers
    assert stage.discard_stale_partial() and not stage.partial.exists()
    assert stage.check() and not stage.discard_stale_partial()
    unfinished = Stage(tmp_path, 2, "rank", {"x": 1})
    unfinished.begin_partial()
    assert not unfinished.discard_stale_partial() and unfinished.partial.exists()  # work in progress is kept


# ---- distributed helpers ----
class FakeZero3Config:
    """Stands in for transformers' HfDeepSpeedConfig, so this unit test needs no DeepSpeed launch (tests/test_deepspeed.py
    runs the real one)."""

    config = {"zero_optimization": {"stage": 3}}

    def is_zero3(self):
        return True


def test_zero3_init_disabled_loads_whole_judges_and_restores_the_config(monkeypatch, tiny_pair_lm_path):
    from transformers.integrations import deepspeed as hf_deepspeed
    from transformers.integrations import is_deepspeed_zero3_enabled

    from rlhf_pairs.judges.loading import load_judge
    from rlhf_pairs.utils.distributed import zero3_init_disabled

    fake = FakeZero3Config()  # kept alive: transformers holds only a weak reference
    monkeypatch.setattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", weakref.ref(fake))
    assert is_deepspeed_zero3_enabled()
    with zero3_init_disabled():
        assert not is_deepspeed_zero3_enabled()
    assert is_deepspeed_zero3_enabled() and hf_deepspeed._hf_deepspeed_config_weak_ref() is fake
    with pytest.raises(RuntimeError, match="boom"), zero3_init_disabled():
        raise RuntimeError("boom")
    assert is_deepspeed_zero3_enabled()
    # A from_pretrained under the (simulated) ZeRO-3 config would build a partitioned model through deepspeed.
    judge = load_judge("pair_lm", str(tiny_pair_lm_path))
    assert is_deepspeed_zero3_enabled()
    # ... and the same weights as a plain load without any DeepSpeed config.
    monkeypatch.setattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    plain = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path))
    ours, theirs = judge.model.state_dict(), plain.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_process_timeout_reads_the_environment(monkeypatch):
    from datetime import timedelta

    from rlhf_pairs.utils.distributed import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, process_timeout

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert process_timeout() == timedelta(seconds=DEFAULT_TIMEOUT_S) == timedelta(hours=3)
    monkeypatch.setenv(TIMEOUT_ENV, "90")
    assert process_timeout() == timedelta(seconds=90)
    for bad in ("0", "-5", "soon", "nan"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=TIMEOUT_ENV):
            process_timeout()


@pytest.mark.parametrize("existing_group", [False, True], ids=["created_here", "created_by_training_args"])
def test_process_state_gives_the_process_group_the_timeout(existing_group):
    # A one-process gloo group (MULTI_CPU, as under the 2-process CPU launch); a group created first with a short
    # timeout stands for the one a parsed TrainingArguments creates.
    script = (
        "import sys, torch, torch.distributed as dist\n"
        "from datetime import timedelta\n"
        "if sys.argv[1] == 'True':\n"
        "    dist.init_process_group('gloo', timeout=timedelta(seconds=60))\n"
        "from rlhf_pairs.utils.distributed import process_state\n"
        "state = process_state()\n"
        "backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device('cpu'))\n"
        "print(state.distributed_type, backend.options._timeout.total_seconds())\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "RLHF_PAIRS_DIST_TIMEOUT_S": "1234"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, str(existing_group)], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["DistributedType.MULTI_CPU", "1234.0"]


def test_an_interrupt_swallowed_by_a_finaliser_still_stops_the_run(inputs, uninterrupted, tmp_path):
    """SIGINT delivered where Python drops the exception (inside a finaliser) used to let the run go on to the end.
    The recorded signal is raised again at the next kill point: the run stops before the next stage, and the same
    command resumes to the uninterrupted run's candidates."""
    out = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_PAIRS_INTERRUPT_AT": "round_1/generate:shard#1"}
    env.pop("RLHF_PAIRS_KILL_AT", None)
    cmd = [sys.executable, "-m", "rlhf_pairs.cli", "iterate", *args(inputs, out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "stopped by SIGINT; re-run the same command to resume" in proc.stderr
    assert not (out / "round_1" / "generate" / "DONE").exists()
    assert (out / "round_1" / "generate.partial" / "candidates-00000.jsonl").exists()  # the finished shard stays
    run_cli(inputs, out, "--rounds", "1")
    name = "generate/candidates.jsonl"
    assert (out / "round_1" / name).read_bytes() == (uninterrupted / "round_1" / name).read_bytes()


def test_sigterm_stops_the_run_and_a_second_run_is_refused_while_one_lives(inputs, tmp_path):
    from rlhf_pairs.utils.locking import OutputLocked

    out = tmp_path / "busy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RLHF_PAIRS_KILL_AT", None)
    cmd = [sys.executable, "-m", "rlhf_pairs.cli", "iterate", *args(inputs, out)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = Path(f"{out.resolve()}.lock")
        deadline = time.monotonic() + 120
        while not (lock.exists() and str(first.pid) in lock.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(OutputLocked, match=rf"busy is in use by another run \(pid {first.pid} on host "):
            main(args(inputs, out))
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 128 + signal.SIGTERM  # promptly, with the conventional exit status
    finally:
        first.kill()
        first.wait()


def test_dataset_config_picks_the_prompt_configuration(tmp_path):
    """`dataset_config` (TRL's ScriptArguments name) selects a configuration of `dataset_name`, as in rank."""
    from rlhf_pairs.configs import IterateConfig
    from rlhf_pairs.trainer.iterative_plan import load_prompts

    root = tmp_path / "two-configs"
    root.mkdir()
    (root / "first.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n")
    (root / "second.jsonl").write_text(json.dumps({"prompt": "b"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files: first.jsonl\n"
        "- config_name: second\n  data_files: second.jsonl\n---\n"
    )
    for name, expected in (("second", ["b", "c"]), ("first", ["a"])):
        round_prompts, eval_prompts = load_prompts(IterateConfig(dataset_name=str(root), rounds=1, dataset_config=name))
        assert [list(prompts) for prompts in round_prompts] == [expected] and eval_prompts == []


def test_prompts_edited_after_a_finished_stage_are_refused_naming_the_input(inputs, tmp_path, monkeypatch):
    """A re-run after the prompt folder's configuration changed on disk is refused, naming the data, not resumed on
    last round's prompts (datasets served its cache of the folder before: the re-run went on silently)."""
    root = tmp_path / "prompts"
    root.mkdir()
    (root / "first.jsonl").write_text(json.dumps({"prompt": "unused"}) + "\n")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files: first.jsonl\n"
        "- config_name: round2\n  data_files: round2.jsonl\n---\n"
    )
    (root / "round2.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:4]))
    argv = args({**inputs, "prompts": root}, tmp_path / "run", "--rounds", "1", "--num_eval_prompts", "0")
    argv += ["--dataset_config", "round2"]
    monkeypatch.setenv("RLHF_PAIRS_FAIL_AT", "round_1/generate:committed")
    with pytest.raises(RuntimeError):
        main(argv)  # stops right after the generate stage is committed
    monkeypatch.delenv("RLHF_PAIRS_FAIL_AT")
    (root / "round2.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[4:8]))
    with pytest.raises(
        StageConfigChanged,
        match=rf"round_1/generate was made from other data: the prompts of round 1 read from '{root}' "
        r"\(configuration 'round2', split 'train'\) changed since it ran \(changed: prompts_sha256 ",
    ):
        main(argv)


def test_a_judge_retrained_into_its_folder_is_refused_naming_the_judge(inputs, tmp_path, monkeypatch):
    """The judge's files, not only its path, are part of the rank stage's fingerprint: a judge saved again into the
    same folder (retrained, replaced) makes finished rankings another judge's, refused naming the folder; --redo
    ranks again from that stage on."""
    judge = build_tiny_pair_lm(tmp_path / "judge", seed=3)
    argv = args({**inputs, "judge": judge}, tmp_path / "run", "--rounds", "1", "--num_eval_prompts", "0")
    monkeypatch.setenv("RLHF_PAIRS_FAIL_AT", "round_1/rank:committed")
    with pytest.raises(RuntimeError):
        main(argv)  # stops right after the rank stage is committed
    monkeypatch.delenv("RLHF_PAIRS_FAIL_AT")
    build_tiny_pair_lm(judge, seed=4)
    with pytest.raises(
        StageConfigChanged,
        match=rf"round_1/rank was made from other data: the judge's files in {judge.resolve()} changed since it ran "
        r"\(changed: judge_sha256 ",
    ):
        main(argv)
    main([*argv, "--redo", "true"])
    assert (tmp_path / "run" / "round_1" / "train" / "DONE").exists()


def test_iterate_options_of_the_previous_release_still_parse_with_a_warning(tmp_path):
    argv = ["--dataset", "p.jsonl", "--dataset_split", "train", "--eval_dataset", "e.jsonl", "--eval_split", "dev"]
    argv += ["--rank_method", "round_robin", "--judge", "j", "--model_name_or_path", "m", "--output_dir", str(tmp_path)]
    argv += ["--use_cpu", "true", "--bf16", "false"]
    with pytest.warns(FutureWarning, match="`rank_method` is deprecated.*`ranking_method`"):
        config, judge, training, model = parse(iterate, argv)
    assert (config.dataset_name, config.dataset_train_split) == ("p.jsonl", "train")
    assert (config.eval_dataset_name, config.dataset_test_split, config.ranking_method) == (
        "e.jsonl",
        "dev",
        "round_robin",
    )
    assert (judge.judge, model.model_name_or_path, training.output_dir) == ("j", "m", str(tmp_path))


def test_a_changed_stage_names_nested_settings_with_old_and_new_values(tmp_path):
    stage = Stage(tmp_path, 1, "train", {"training": {"learning_rate": 1e-5, "beta": 0.1}, "mode": "dpo"})
    staging = stage.staging_dir()
    stage.commit(staging, {})
    changed = Stage(tmp_path, 1, "train", {"training": {"learning_rate": 5e-5, "beta": 0.1}, "mode": "dpo"})
    with pytest.raises(StageConfigChanged, match=r"changed: training\.learning_rate \(1e-05 -> 5e-05\)\);"):
        changed.check()
    assert Stage(tmp_path, 1, "train", stage.fingerprint).check()


def test_iterate_and_best_of_n_share_their_sampling_fields_and_checks():
    """One SamplingArguments: the same names, defaults and checks in both jobs (iterate accepted a temperature of 0,
    which samples identical candidates, and so drops every pair as identical)."""
    import dataclasses

    from rlhf_pairs.configs import BestOfNConfig, IterateConfig, SamplingArguments

    shared = [f.name for f in dataclasses.fields(SamplingArguments)]
    for cls, required in (
        (IterateConfig, {"dataset_name": "p"}),
        (BestOfNConfig, {"dataset_name": "p", "output": "o.jsonl"}),
    ):
        assert [f.name for f in dataclasses.fields(cls)][: len(shared)] == shared
        for bad, message in (
            ({"generation_temperature": 0.0}, "`generation_temperature` must be > 0"),
            ({"generation_top_p": 0.0}, r"`generation_top_p` must be in \(0, 1\]"),
            ({"num_candidates": 1}, "`num_candidates` must be >= 2"),
            ({"vllm_tensor_parallel_size": 0}, "`vllm_tensor_parallel_size` must be >= 1"),
        ):
            with pytest.raises(ValueError, match=message):
                cls(**required, **bad)
