"""Real DeepSpeed ZeRO runs: every training job under the shipped `zero2.yaml` / `zero3.yaml` launcher configs, with
2 CPU processes (gloo), through the commands a user types (the recipes' READMEs show both; the first starts the
second):

    rlhf-pairs <job> --config <tiny recipe> ... --accelerate_config zero3 --num_processes 2 --mixed_precision no
    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 2 --mixed_precision no \
        scripts/<job>.py --config <tiny recipe> ...

(the tiny recipes set `use_cpu: true` and `bf16: false`; `--mixed_precision no` overrides the configs' bf16, which
DeepSpeed's config check refuses against `bf16: false`). DeepSpeed picks its CPU accelerator (`DS_ACCELERATOR=cpu`)
and JIT-builds its shared-memory all-reduce op with g++ on first use (minutes), cached in `$TORCH_EXTENSIONS_DIR`
(default here: `.cache/torch_extensions` in the checkout, where `.ci/run` points it too): the `shm_op` fixture builds
it once, under its own timeout, before the first launch.

DeepSpeed keeps a parameter under `stage3_param_persistence_threshold` (1e5 elements) whole on every process, which
is every parameter of the tiny test models; the trained policies here are therefore a wider tiny Llama (`wide_lm`)
whose embeddings, LM head and MLP matrices ZeRO-3 really partitions. The judges stay tiny (they load whole anyway).
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, free_port
from safetensors.torch import load_file

from rlhf_pairs.cli import JOBS
from rlhf_pairs.judges.pair_lm import PairPreferenceJudge
from rlhf_pairs.judges.pairrm import PairRMJudge
from rlhf_pairs.trainer.pair_pm_data import preference_pairs, split_pairs
from rlhf_pairs.utils.io import read_jsonl

PROMPTS = ROOT / "rlhf_pairs" / "data" / "demo_prompts.jsonl"
ONLINE_PROMPTS = ROOT / "rlhf_pairs" / "data" / "demo_pairs.jsonl"
PAIRS = ROOT / "rlhf_pairs" / "data" / "samples" / "preference_pairs.jsonl"
BUILD_TIMEOUT_S = 900  # the first build of DeepSpeed's shm op on 2 busy cores
LAUNCH_TIMEOUT_S = 480  # a launch takes 30-60 s here; a hang fails the test instead of CI's whole budget


def launch_env(**extra: str) -> dict:
    """One thread per process, DeepSpeed's CPU accelerator, the shm op cached in the checkout unless told otherwise."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TRL_EXPERIMENTAL_SILENCE": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env.pop("RLHF_PAIRS_KILL_AT", None)
    return {**env, **extra}


def run_group(cmd: list[str], env: dict, cwd, timeout: int) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout the whole group (launcher and workers) is killed."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"`{' '.join(cmd[:4])} ...` ran over {timeout} s:\n{output[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


@pytest.fixture(scope="module")
def shm_op():
    """DeepSpeed's shared-memory all-reduce op, built (or found in the cache) before the first launch."""
    code = "from deepspeed.comm.torch import build_shm_op; assert build_shm_op() is not None"
    proc = run_group([sys.executable, "-c", code], launch_env(), ROOT, BUILD_TIMEOUT_S)
    assert proc.returncode == 0, f"building DeepSpeed's shm op failed (is g++ installed?):\n{proc.stdout[-6000:]}"


def launch(
    job: str, zero: str, args: list, cwd, *, kill_at: str | None = None, via_cli: bool = False
) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file recipes/accelerate/<zero>.yaml --num_processes 2 --mixed_precision no
    scripts/<job's script> <args>``, or (``via_cli``) ``rlhf-pairs <job> <args> --accelerate_config <zero> ...``, which
    starts that launch; fails the test with the output unless it exits 0 (or, with ``kill_at``, is killed there).

    The direct form spares the ``rlhf-pairs`` process, which imports the job (torch, transformers, TRL: 5-10 s of
    CI a launch) only to start the launcher; one launch here (iterate's) and ``tests/test_packaging.py`` go through
    it."""
    flags = ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())]
    if via_cli:
        cmd = [sys.executable, "-m", "rlhf_pairs.cli", job, *map(str, args), "--accelerate_config", zero, *flags]
    else:
        script = ROOT / "scripts" / f"{JOBS[job][0].rpartition('.')[2]}.py"  # scripts/train_pair_pm.py for train-pm
        config = ROOT / "recipes" / "accelerate" / f"{zero}.yaml"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *flags, str(script)]
        cmd += map(str, args)
    env = launch_env(**({"RLHF_PAIRS_KILL_AT": kill_at} if kill_at else {}))
    proc = run_group(cmd, env, cwd, LAUNCH_TIMEOUT_S)
    if kill_at is None:
        assert proc.returncode == 0, proc.stdout[-6000:]
    return proc


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def assert_whole_and_trained(start: dict, end: dict) -> None:
    """``end`` holds every tensor of ``start`` at its full shape (not a ZeRO-3 shard) and training moved most."""
    assert start.keys() == end.keys()
    same_shape = [k for k in start if start[k].shape == end[k].shape]
    assert len(same_shape) >= len(start) - 2  # train-pm adds a pad token row to the embeddings and the LM head
    assert all(end[k].numel() > 0 and torch.isfinite(end[k]).all() for k in end)
    assert sum(not torch.equal(start[k], end[k]) for k in same_shape) > len(start) // 2


def log_history(path) -> list[dict]:
    return json.loads((Path(path) / "trainer_state.json").read_text())["log_history"]


@pytest.fixture(scope="module")
def wide_lm(tmp_path_factory, tiny_pair_lm_path):
    """The tiny pair LM's tokenizer and chat template on a random Llama with hidden size 256, saved like a checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_pair_lm_path)
    config.update({"hidden_size": 256, "intermediate_size": 512, "head_dim": 64, "initializer_range": 0.02})
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    threshold = 100_000  # DeepSpeed's default stage3_param_persistence_threshold
    assert sum(p.numel() for p in model.parameters() if p.numel() > threshold) > model.num_parameters() // 2
    path = tmp_path_factory.mktemp("models") / "wide-lm"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_pair_lm_path).save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------------------------
# iterate: generation, ranking and eval with whole models, training partitioned (ZeRO-3), resume from its checkpoint
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iterate_inputs(shm_op, tmp_path_factory, wide_lm, tiny_pair_lm_path):
    return {"root": tmp_path_factory.mktemp("zero_iterate"), "policy": wide_lm, "judge": tiny_pair_lm_path}


def iterate(inputs, out, *extra, kill_at=None, via_cli=False):
    # One round of 4 prompts: 4 pairs, one per process and step, so 2 training steps (a checkpoint after each).
    args = ["--config", "tiny_cpu", "--model_name_or_path", inputs["policy"], "--judge", inputs["judge"],
            "--dataset_name", PROMPTS, "--output_dir", out, "--rounds", "1", "--per_device_train_batch_size", "1",
            *extra]  # fmt: skip
    return launch("iterate", "zero3", args, inputs["root"], kill_at=kill_at, via_cli=via_cli)


@pytest.fixture(scope="module")
def zero3_iterate(iterate_inputs):
    out = iterate_inputs["root"] / "uninterrupted"
    proc = iterate(iterate_inputs, out, via_cli=True)  # the README's command, through `rlhf-pairs`
    return out, proc.stdout


def test_iterate_round_trains_the_policy_under_zero3(iterate_inputs, zero3_iterate):
    out, output = zero3_iterate
    assert "2 process(es)" in output
    (metrics,) = read_jsonl(out / "metrics.jsonl")
    assert metrics["pairs/kept"] == 4 and metrics["train/steps"] == 2
    assert math.isfinite(metrics["train/train_loss"]) and math.isfinite(metrics["train/last_loss"])
    # The policy DeepSpeed trained partitioned is saved whole (fp32) and loads with from_pretrained ...
    from transformers import AutoModelForCausalLM

    trained = out / "round_1" / "train"
    model = AutoModelForCausalLM.from_pretrained(trained)
    assert model.dtype == torch.float32
    assert_whole_and_trained(weights(iterate_inputs["policy"]), weights(trained))
    # ... and generated the eval stage's completions (loaded whole, as the next round's generator is), judged by the
    # pair judge, also loaded whole on every process.
    completions = read_jsonl(out / "round_1" / "eval" / "completions.jsonl")
    assert len(completions) == 2 and all(0.0 <= c["p_new_better"] <= 1.0 for c in completions)
    assert metrics["eval/win_rate"] is not None


def test_iterate_resumes_from_a_zero3_checkpoint(iterate_inputs, zero3_iterate):
    uninterrupted, _ = zero3_iterate
    out = iterate_inputs["root"] / "resumed"
    killed = iterate(iterate_inputs, out, kill_at="round_1/train:step#2")  # SIGKILL after checkpoint-1
    assert killed.returncode != 0 and not (out / "round_1" / "train" / "DONE").exists(), killed.stdout[-3000:]
    # checkpoint-1 is DeepSpeed's: ZeRO-3 model and optimizer shards, one per process.
    checkpoint = out / "round_1" / "train.partial" / "checkpoint-1"
    optim = [checkpoint / "global_step1" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    assert all(p.is_file() for p in optim), sorted(p.name for p in checkpoint.rglob("*"))
    state = torch.load(optim[0], map_location="cpu", weights_only=False)
    assert state["ds_config"]["zero_optimization"]["stage"] == 3

    iterate(iterate_inputs, out)
    summary = json.loads((out / "round_1" / "train" / "stage.json").read_text())["summary"]
    assert summary["resumed_from"] == "checkpoint-1"
    for stage in ("generate", "rank", "pairs"):
        name = {"generate": "candidates.jsonl", "rank": "rankings.jsonl", "pairs": "pairs.jsonl"}[stage]
        assert (out / "round_1" / stage / name).read_bytes() == (uninterrupted / "round_1" / stage / name).read_bytes()
    a, b = weights(out / "round_1" / "train"), weights(uninterrupted / "round_1" / "train")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    resumed, reference = read_jsonl(out / "metrics.jsonl")[0], read_jsonl(uninterrupted / "metrics.jsonl")[0]
    assert resumed["train/train_loss"] == pytest.approx(reference["train/train_loss"], abs=1e-6)
    assert resumed["eval/win_rate"] == reference["eval/win_rate"]


def test_iterate_merges_a_lora_adapter_trained_under_zero3(iterate_inputs):
    """Every process gathers the partitioned weights, the main one merges the adapter: a whole, plain model."""
    out = iterate_inputs["root"] / "lora"
    iterate(iterate_inputs, out, "--use_peft", "true", "--learning_rate", "0.05", "--num_eval_prompts", "0")
    start, merged = weights(iterate_inputs["policy"]), weights(out / "round_1" / "train")
    assert start.keys() == merged.keys() and all(start[k].shape == merged[k].shape for k in start)
    changed = {k for k in start if not torch.equal(start[k], merged[k])}
    # TRL's default LoRA targets of a Llama: q_proj and v_proj, in both layers.
    assert changed == {f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in "qv"}


# ------------------------------------------------------------------------------------------------------------------
# train-pm (ZeRO-3), train-pairrm (ZeRO-2): the outputs are judges; held-out accuracy as the saved judge gives it
# ------------------------------------------------------------------------------------------------------------------


def held_out_pairs(eval_size: float = 0.2, seed: int = 0):
    """(prompts, chosen, rejected) of the pairs that the tiny recipes' ``eval_size`` and ``seed`` hold out."""
    pairs, _ = preference_pairs(read_jsonl(PAIRS))
    _, held_out = split_pairs(pairs, eval_size, seed)
    return [p.prompt for p in held_out], [p.chosen for p in held_out], [p.rejected for p in held_out]


def test_train_pm_under_zero3_saves_a_pair_preference_judge(shm_op, wide_lm, tmp_path):
    out = tmp_path / "pair_pm"
    args = ["--config", "tiny-cpu", "--model_name_or_path", wide_lm, "--dataset_name", PAIRS,
            "--max_steps", "4", "--output_dir", out]  # fmt: skip
    launch("train-pm", "zero3", args, tmp_path)
    history = log_history(out)
    (evaluation,) = [h for h in history if "eval_pairwise_accuracy" in h]
    assert math.isfinite(next(h["train_loss"] for h in history if "train_loss" in h))
    assert_whole_and_trained(weights(wide_lm), weights(out))  # with the pad token's row added under ZeRO-3
    judge = PairPreferenceJudge.from_pretrained(str(out), device="cpu")
    assert judge.tokenizer.pad_token == "<|pad|>"
    # Evaluated through the partitioned model during training == the saved judge's compare (same code path).
    prompts, chosen, rejected = held_out_pairs()
    probs = judge.compare(prompts, chosen, rejected)
    assert evaluation["eval_pairwise_pairs"] == len(prompts) == 2
    assert evaluation["eval_pairwise_prob_chosen"] == pytest.approx(sum(probs) / len(probs), abs=1e-5)


def test_train_pm_lora_under_zero3_merges_into_the_judge_ddp_would_give(shm_op, wide_lm, tmp_path):
    """LoRA under ZeRO-3 (the 8B LoRA recipe's setting): the adapter is trained on partitioned weights and merged into
    a whole judge; the same run under plain DDP (2 gloo processes) gives the same held-out numbers and weights."""
    args = ["--config", "tiny-cpu", "--model_name_or_path", wide_lm, "--dataset_name", PAIRS, "--max_steps", "3",
            "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "all-linear",
            "--merge_lora", "true", "--learning_rate", "0.01"]  # fmt: skip
    outs = {}
    for config, name in (("zero3", "zero3"), ("cpu_2proc", "ddp")):
        outs[name] = tmp_path / name
        launch("train-pm", config, [*args, "--output_dir", outs[name]], tmp_path)
    zero3, ddp = weights(outs["zero3"]), weights(outs["ddp"])
    assert not any("lora" in key for key in zero3)  # merged: a plain checkpoint the judge loads
    start = weights(wide_lm)
    moved = [
        k for k in start if k in zero3 and zero3[k].shape == start[k].shape and not torch.equal(zero3[k], start[k])
    ]
    assert moved, "the merged LoRA update changed no weight"
    for key in ddp:
        assert torch.allclose(zero3[key], ddp[key], atol=1e-5), key  # ZeRO-3 == DDP, to float rounding
    evals = {zero: next(h for h in log_history(out) if "eval_pairwise_accuracy" in h) for zero, out in outs.items()}
    assert evals["zero3"]["eval_pairwise_accuracy"] == evals["ddp"]["eval_pairwise_accuracy"]
    assert evals["zero3"]["eval_pairwise_prob_chosen"] == pytest.approx(
        evals["ddp"]["eval_pairwise_prob_chosen"], abs=1e-5
    )
    judge = PairPreferenceJudge.from_pretrained(str(outs["zero3"]), device="cpu")
    prompts, chosen, rejected = held_out_pairs()
    probs = judge.compare(prompts, chosen, rejected)
    assert evals["zero3"]["eval_pairwise_prob_chosen"] == pytest.approx(sum(probs) / len(probs), abs=1e-5)


def test_train_pairrm_under_zero2_saves_a_pairrm_judge(shm_op, tiny_pairrm_path, tmp_path):
    out = tmp_path / "pairrm"
    args = ["--config", "tiny-cpu", "--model_name_or_path", tiny_pairrm_path, "--dataset_name", PAIRS,
            "--max_steps", "4", "--output_dir", out]  # fmt: skip
    launch("train-pairrm", "zero2", args, tmp_path)
    history = log_history(out)
    (evaluation,) = [h for h in history if "eval_pairwise_accuracy" in h]
    assert math.isfinite(next(h["train_loss"] for h in history if "train_loss" in h))
    assert_whole_and_trained(weights(tiny_pairrm_path), weights(out))
    judge = PairRMJudge.from_pretrained(str(out), device="cpu")
    prompts, chosen, rejected = held_out_pairs()
    probs = judge.compare(prompts, chosen, rejected)
    assert evaluation["eval_pairwise_prob_chosen"] == pytest.approx(sum(probs) / len(probs), abs=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# online-dpo and grpo: generation from the partitioned policy (ZeRO-3), the judge whole on every process
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "zero"),
    [("online-dpo", "zero3"), ("grpo", "zero3"), ("online-dpo", "zero2"), ("grpo", "zero2")],
    ids=lambda v: v,
)
def test_online_jobs_train_under_zero(shm_op, job, zero, wide_lm, tiny_pair_lm_path, tmp_path):
    out = tmp_path / job
    # beta > 0 for GRPO too, so that its reference model (partitioned under ZeRO-3) is used.
    args = ["--config", "tiny_cpu", "--model_name_or_path", wide_lm, "--judge", tiny_pair_lm_path,
            "--dataset_name", ONLINE_PROMPTS, "--output_dir", out, "--beta", "0.1"]  # fmt: skip
    launch(job, zero, args, tmp_path)
    history = log_history(out)
    train = [h for h in history if "loss" in h]
    assert [h["step"] for h in train] == [1, 2] and all(math.isfinite(h["loss"]) for h in train)
    # The second step's KL is against a reference that stayed at the initial policy while the policy moved.
    kl = "objective/kl" if job == "online-dpo" else "kl"
    assert train[0][kl] == pytest.approx(0.0, abs=1e-6) and train[1][kl] > 0
    (win_rate,) = [h for h in history if "eval_win_rate" in h]  # the policy's greedy answers, judged
    assert 0.0 <= win_rate["eval_win_rate"] <= 1.0
    assert_whole_and_trained(weights(wide_lm), weights(out))
