"""Best-of-n: the library call (a reward model keeps the argmax reward, a pair judge plays the knockout), the job
(1 vs 2 processes, resume after max_shards, a stop and a kill, refusal of changed settings, bad input), its recipes
and its README's offline command."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlhf_pairs.best_of_n import BestOfNResult, best_of_n
from rlhf_pairs.cli import main as cli
from rlhf_pairs.configs import BestOfNConfig, JudgeArguments
from rlhf_pairs.data_utils import judge_prompt
from rlhf_pairs.generation import GenerationSettings, generate_candidates
from rlhf_pairs.judges.pair_lm import PairPreferenceJudge
from rlhf_pairs.judges.reward_model import RewardModelJudge
from rlhf_pairs.ranking import bracket_order, rank_candidates
from rlhf_pairs.testing_utils import build_tiny_pair_lm
from rlhf_pairs.utils.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "best_of_n" / "tiny_cpu.yaml"
PROMPTS = [
    "What is the capital of France?",
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a color."}],
    "Write a haiku about the sea.",
    [
        {"role": "user", "content": "hello!"},
        {"role": "assistant", "content": "hi!"},
        {"role": "user", "content": "1+1?"},
    ],
    "Tell me a joke.",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny policy (a Llama with Llama-3's chat template) and a prompt file with an extra column."""
    root = tmp_path_factory.mktemp("best_of_n")
    policy = build_tiny_pair_lm(root / "policy", seed=1)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return {"root": root, "policy": policy, "prompts": prompts}


@pytest.fixture(scope="module")
def policy(inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(inputs["policy"]), AutoTokenizer.from_pretrained(inputs["policy"])


def job_args(inputs, output, judge, *extra, data=None):
    return list(map(str, [
        "--config", RECIPE, "--model_name_or_path", inputs["policy"], "--judge", judge,
        "--dataset_name", data or inputs["prompts"], "--output", output, "--shard_size", 2, *extra,
    ]))  # fmt: skip


def run_script(args, cwd, kill_at=None):
    """``python scripts/best_of_n.py <args>`` in a fresh process with one thread (as each process of the
    2-process launch has), optionally with ``RLHF_PAIRS_KILL_AT``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RLHF_PAIRS_KILL_AT", None)
    if kill_at:
        env["RLHF_PAIRS_KILL_AT"] = kill_at
    cmd = [sys.executable, str(ROOT / "scripts" / "best_of_n.py"), *args]
    return subprocess.run(cmd, env=env, cwd=cwd, timeout=600, capture_output=True, text=True)


# ---- the library call ----
def test_a_reward_model_keeps_its_highest_reward_candidate(policy, tiny_reward_model_path):
    model, tokenizer = policy
    judge = RewardModelJudge.from_pretrained(str(tiny_reward_model_path), device="cpu")
    results = best_of_n(model, tokenizer, judge, PROMPTS, 4, max_new_tokens=8, seed=3)
    assert all(isinstance(r, BestOfNResult) for r in results) and len(results) == len(PROMPTS)
    # The candidates are generate_candidates' own, sampled from the prompts as given (system turn included).
    sampled, _ = generate_candidates(model, tokenizer, PROMPTS, GenerationSettings(4, 8), seed=3)
    assert [r.candidates for r in results] == sampled
    assert results[1].prompt == PROMPTS[1]
    for prompt, result in zip(PROMPTS, results):
        judge.clear_cache()
        # The judge reads the prompt with its system turn merged into the user turn (judge_prompt).
        rewards = judge.score_responses([judge_prompt(prompt, "merge")] * 4, result.candidates)
        assert len(set(rewards)) > 1  # a real choice
        assert result.best == max(range(4), key=lambda j: (rewards[j], -j))
        assert result.response == result.candidates[result.best]
        assert result.ranking.scores == pytest.approx(rewards, abs=1e-5)
        assert (result.ranking.num_comparisons, result.ranking.num_scored, result.ranking.skipped) == (0, 4, None)


def test_a_pair_judge_plays_the_knockout(policy, tiny_pair_lm_path):
    model, tokenizer = policy
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    n, seed = 5, 3
    results = best_of_n(model, tokenizer, judge, PROMPTS, n, max_new_tokens=8, seed=seed)
    judged = [judge_prompt(p, "merge") for p in PROMPTS]
    expected = rank_candidates(judge, judged, [r.candidates for r in results], seed=seed, find_worst=False)
    for result, exp in zip(results, expected):
        assert result.best == exp.best and result.response == result.candidates[exp.best]
        assert result.ranking.num_comparisons == n - 1  # the winners' bracket only (ranking.py)
        assert (result.ranking.scores, result.ranking.worst, result.ranking.num_scored) == (None, None, 0)
    # find_worst: the losers' bracket too, ceil(n/2) - 1 more matches, or floor(n/2) - 1 when the round-1 bye
    # holder (n odd) is the best; the best does not change.
    with_worst = best_of_n(model, tokenizer, judge, PROMPTS, n, max_new_tokens=8, seed=seed, find_worst=True)
    for prompt, result, again in zip(judged, results, with_worst):
        assert again.candidates == result.candidates and again.best == result.best
        bye_holder = bracket_order(prompt, n, seed)[-1]
        extra = n // 2 - 1 if again.best == bye_holder else math.ceil(n / 2) - 1
        assert again.ranking.num_comparisons == n - 1 + extra
        assert again.ranking.worst is not None and again.ranking.worst != again.best


def test_the_library_call_refuses_bad_arguments_before_sampling(tiny_pair_lm_path):
    with pytest.raises(ValueError, match=r"prompts\[1\].*end with a user turn"):
        best_of_n(
            None, None, None, ["ok", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]], 2
        )
    with pytest.raises(ValueError, match="Unknown ranking method 'nope'"):
        best_of_n(None, None, None, ["ok"], 2, method="nope")
    with pytest.raises(ValueError, match="`n` must be an int >= 1, got 0"):
        best_of_n(None, None, None, ["ok"], 0)


# ---- the job ----
@pytest.fixture(scope="module")
def single_process(inputs, tiny_reward_model_path):
    """The job on one process (one thread), with the reward model judge; returns its output and the job's
    arguments for another output."""

    def args_for(output):
        return job_args(inputs, output, tiny_reward_model_path, "--judge_type", "reward_model")

    out = inputs["root"] / "one" / "best.jsonl"
    proc = run_script(args_for(out), cwd=inputs["root"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "over 1 process(es)" in proc.stderr
    return out, args_for


def test_the_job_writes_the_best_per_prompt(inputs, single_process):
    out, _ = single_process
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == list(range(len(PROMPTS)))  # input order, input columns kept
    assert [r["prompt"] for r in rows] == PROMPTS
    for row in rows:
        assert list(row)[:2] == ["id", "prompt"] and len(row["responses"]) == 4
        assert row["response"] == row["responses"][row["best"]]
        assert row["scores"][row["best"]] == max(row["scores"]) and row["rewards"] == row["scores"]
        assert (row["num_comparisons"], row["num_scored"], row["skipped"], row["worst"]) == (0, 4, None, None)
    candidates = read_jsonl(Path(f"{out}.work") / "candidates.jsonl")
    assert [c["responses"] for c in candidates] == [r["responses"] for r in rows]


def test_one_and_two_processes_write_identical_output(inputs, single_process, tmp_path, launch_two_processes):
    one, args_for = single_process
    two = tmp_path / "best.jsonl"
    log = launch_two_processes("best_of_n.py", args_for(two), cwd=tmp_path)
    assert "over 2 process(es)" in log
    assert two.read_bytes() == one.read_bytes()
    assert len(list(Path(f"{two}.work").glob("candidates-*.jsonl"))) == 3


def test_a_killed_run_resumes_to_the_same_output(inputs, single_process, tmp_path):
    one, args_for = single_process
    out = tmp_path / "best.jsonl"
    args = args_for(out)
    proc = run_script(args, cwd=tmp_path, kill_at="generate:shard#2")
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-6000:]
    work = Path(f"{out}.work")
    assert sorted(p.name for p in work.glob("candidates-*")) == ["candidates-00000.jsonl", "candidates-00001.jsonl"]
    assert not out.exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # resumed in this process, with the thread count of the killed run
    try:
        cli(["best-of-n", *args])
    finally:
        torch.set_num_threads(threads)
    assert out.read_bytes() == one.read_bytes()


def test_a_stopped_run_resumes_to_an_uninterrupted_runs_output(inputs, tiny_pair_lm_path, tmp_path, monkeypatch):
    """In this process: max_shards stops after one generation shard, then a SIGINT swallowed by a finaliser after
    the first ranking shard stops the run at the next one; the same command then finishes it."""
    from rlhf_pairs.utils.faults import StopRequested

    full, part = tmp_path / "full" / "best.jsonl", tmp_path / "part" / "best.jsonl"
    cli(["best-of-n", *job_args(inputs, full, tiny_pair_lm_path)])
    args = job_args(inputs, part, tiny_pair_lm_path)
    cli(["best-of-n", *args, "--max_shards", "1"])
    work = Path(f"{part}.work")
    assert [p.name for p in work.glob("candidates-*")] == ["candidates-00000.jsonl"] and not part.exists()
    monkeypatch.setenv("RLHF_PAIRS_INTERRUPT_AT", "rank:shard#1")
    with pytest.raises(StopRequested, match="re-run the same command to resume"):
        cli(["best-of-n", *args])
    monkeypatch.delenv("RLHF_PAIRS_INTERRUPT_AT")
    assert len(list(work.glob("candidates-*"))) == 3 and not part.exists()
    assert len(list(Path(f"{work}/ranked.jsonl.shards").glob("shard-*.jsonl"))) == 2
    from rlhf_pairs.scripts import best_of_n as best_of_n_script
    from rlhf_pairs.scripts import run

    summary = run(best_of_n_script, args)
    assert part.read_bytes() == full.read_bytes()
    # The summary counts the prompts the one prompt rule changed (one system turn merged for the judge).
    assert (summary["complete"], summary["system_merged"], summary["rendered_chat_parsed"]) == (True, 1, 0)

    # The best is the knockout's winner over the job's own candidates (judge prompt: system turn merged).
    rows = read_jsonl(full)
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    expected = rank_candidates(
        judge, [judge_prompt(p, "merge") for p in PROMPTS], [r["responses"] for r in rows], find_worst=False
    )
    assert [r["best"] for r in rows] == [e.best for e in expected]
    assert all(r["num_comparisons"] == 3 and r["scores"] is None and r["num_scored"] == 0 for r in rows)
    assert all(r["rewards"] == [1.0 if j == r["best"] else 0.5 for j in range(4)] for r in rows)


def test_changed_settings_over_finished_work_are_refused(inputs, tiny_pair_lm_path, tmp_path):
    out = tmp_path / "best.jsonl"

    def job(*extra, judge=tiny_pair_lm_path):
        return cli(["best-of-n", *job_args(inputs, out, judge, *extra)])

    with pytest.raises(OSError):  # a typo in the policy's path fails before any shard: the fixed run is not refused
        job("--model_name_or_path", tmp_path / "no-such-policy")
    job("--max_shards", "1")
    with pytest.raises(ValueError, match=r"changed: generation_temperature \(1\.0 -> 0\.7\)\);.*--overwrite true"):
        job("--generation_temperature", "0.7")
    other = build_tiny_pair_lm(tmp_path / "other-policy", seed=2)
    with pytest.raises(ValueError, match=r"changed: .*policy\.model_name_or_path \(.*other-policy"):
        job("--model_name_or_path", other)
    assert len(list(Path(f"{out}.work").glob("candidates-*"))) == 1  # refused before touching anything
    job("--generation_temperature", "0.7", "--overwrite", "true")
    assert len(read_jsonl(out)) == len(PROMPTS)
    # Another judge over finished ranking shards: the rank job refuses it, the same way.
    with pytest.raises(ValueError, match=r"ranked\.jsonl\.shards holds 3 finished shard\(s\).*changed: judge"):
        job("--generation_temperature", "0.7", judge=other)


def test_a_policy_saved_again_into_its_folder_is_refused_over_generated_candidates(inputs, tiny_pair_lm_path, tmp_path):
    """Candidates generated by a policy folder whose files changed since (trained again into the same path) are
    another policy's: refused naming the folder, not joined with the new policy's."""
    policy, out = build_tiny_pair_lm(tmp_path / "policy", seed=7), tmp_path / "best.jsonl"
    argv = ["best-of-n", *job_args({**inputs, "policy": policy}, out, tiny_pair_lm_path, "--max_shards", "1")]
    cli(argv)
    build_tiny_pair_lm(policy, seed=8)
    with pytest.raises(
        ValueError,
        match=rf"made with another policy: the policy's files in {policy.resolve()} changed since \(changed: "
        r"model_sha256 .*\); restore them to reuse them, pass --overwrite true",
    ):
        cli(argv)


def test_a_missing_prompt_column_is_named_before_the_output_is_touched(inputs, tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps({"id": 0, "question": "Hi?"}) + "\n")
    out = tmp_path / "out" / "best.jsonl"
    message = r"questions\.jsonl, line 1: no 'prompt' column \(the row has \['id', 'question'\]\); set `prompt_column`"
    with pytest.raises(ValueError, match=message):
        cli(["best-of-n", *job_args(inputs, out, "no-judge", data=data)])
    assert not out.parent.exists()  # no lock, no work directory
    with pytest.raises(FileNotFoundError, match="dataset 'nope.jsonl': no such file or directory"):
        cli(["best-of-n", *job_args(inputs, out, "no-judge", data="nope.jsonl")])
    with pytest.raises(ValueError, match="`num_candidates` must be >= 2"):
        BestOfNConfig(dataset_name="d", output="o.jsonl", num_candidates=1)
    with pytest.raises(ValueError, match=r"`output` must end with \.jsonl"):
        BestOfNConfig(dataset_name="d", output="o.parquet")


# ---- recipes, help, README ----
@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "best_of_n").glob("*.yaml")), ids=lambda p: p.name)
def test_best_of_n_recipes_parse(recipe):
    from trl import ModelConfig

    from rlhf_pairs.scripts.best_of_n import make_parser

    values = yaml.safe_load(recipe.read_text())
    configs = (BestOfNConfig, JudgeArguments, ModelConfig)
    assert set(values) <= {name for cls in configs for name in cls.__dataclass_fields__}, "only the parsed fields"
    argv = ["--config", str(recipe), "--dataset_name", "d.jsonl", "--output", "o.jsonl"]
    argv += [arg for key in ("judge", "model_name_or_path") if key not in values for arg in (f"--{key}", "x")]
    parsed = make_parser().parse_args_and_config(args=argv)
    assert {key: getattr(next(c for c in parsed if hasattr(c, key)), key) for key in values} == values
    config, judge, model = make_parser().parse_args_and_config(args=[*argv, "--num_candidates", "3"])
    assert config.num_candidates == 3 and judge.judge and model.model_name_or_path  # a flag overrides the recipe


def test_the_job_is_listed_and_its_help_shows_its_own_options(capsys):
    assert cli([]) == 2
    assert any(line.split()[:1] == ["best-of-n"] for line in capsys.readouterr().out.splitlines())
    with pytest.raises(SystemExit) as stop:
        cli(["best-of-n", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: rlhf-pairs best-of-n [--config RECIPE]")
    assert "--num_candidates (default: 8)" in text and "--judge_type (default: pair_lm)" in text
    assert "skywork_rm_llama3-8b" in text and "plus the options of trl.ModelConfig" in text


def test_the_readme_offline_command_runs(tmp_path, monkeypatch):
    from test_offline_commands import offline_commands

    monkeypatch.chdir(tmp_path)
    commands = offline_commands("best_of_n")
    assert commands[0] == ["tiny-models", "tiny"] and commands[1][0] == "best-of-n"
    for argv in commands:
        assert cli(argv) == 0
    rows = read_jsonl(tmp_path / "tiny" / "best_of_n.jsonl")
    assert len(rows) == 40 and all(r["response"] == r["responses"][r["best"]] for r in rows)
