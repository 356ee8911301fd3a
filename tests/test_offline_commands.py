"""Every job's README has an offline command on tiny models; these tests run those lines as written (the README is
the source, so the documented commands cannot rot)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from rlhf_pairs.cli import main as cli
from rlhf_pairs.utils.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "rlhf_pairs" / "recipes"


def offline_commands(folder: str) -> list[list[str]]:
    """The ``rlhf-pairs`` lines of the README's ```bash block that opens with ``# offline:``."""
    text = (RECIPES / folder / "README.md").read_text()
    block = re.search(r"```bash\n# offline:\n(.*?)```", text, re.S)
    assert block, f"{folder}/README.md has no offline command block"
    return [shlex.split(line)[1:] for line in block.group(1).splitlines() if line.startswith("rlhf-pairs ")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``rlhf-pairs tiny-models tiny``, run once in a temporary working directory."""
    cwd = tmp_path_factory.mktemp("offline")
    assert cli(["tiny-models", str(cwd / "tiny")]) == 0
    return cwd


def run_documented(folder: str, cwd: Path, monkeypatch) -> None:
    monkeypatch.chdir(cwd)
    commands = offline_commands(folder)
    assert commands[0] == ["tiny-models", "tiny"]
    for argv in commands[1:]:
        assert cli(argv) == 0


def test_tiny_models_writes_models_and_every_sample(tiny):
    data = tiny / "tiny" / "data"
    assert {p.name for p in data.iterdir()} == {
        "candidates.jsonl",
        "rewardbench.jsonl",
        "preference_pairs.jsonl",
        "prompts.jsonl",
    }
    assert (tiny / "tiny" / "pair_lm" / "config.json").exists() and (tiny / "tiny" / "pairrm" / "config.json").exists()
    assert all(set(r) >= {"prompt", "responses"} for r in read_jsonl(data / "candidates.jsonl"))
    assert all(set(r) >= {"prompt", "chosen", "rejected", "subset"} for r in read_jsonl(data / "rewardbench.jsonl"))


def test_rank_offline(tiny, monkeypatch):
    run_documented("rank", tiny, monkeypatch)
    ranked = read_jsonl(tiny / "tiny" / "ranked.jsonl")
    assert len(ranked) == 8 and all(r["skipped"] is None and len(r["rewards"]) == 4 for r in ranked)


def test_eval_offline(tiny, monkeypatch):
    run_documented("eval", tiny, monkeypatch)
    report = json.loads((tiny / "tiny" / "eval" / "report.json").read_text())
    assert report["num_examples"] == 12 and report["metadata"]["judge_type"] == "pairrm"


def test_iterate_offline(tiny, monkeypatch):
    run_documented("iterative_dpo", tiny, monkeypatch)
    assert len(read_jsonl(tiny / "tiny" / "iterate" / "metrics.jsonl")) == 2


@pytest.mark.parametrize(("folder", "output"), [("pair_pm", "pair_pm"), ("pairrm", "pairrm_tuned")])
def test_pair_model_training_offline(folder, output, tiny, monkeypatch):
    run_documented(folder, tiny, monkeypatch)
    assert (tiny / "tiny" / output / "model.safetensors").exists()


@pytest.mark.parametrize(("folder", "output"), [("online_dpo", "online_dpo"), ("grpo", "grpo")])
def test_online_training_offline(folder, output, tiny, monkeypatch):
    run_documented(folder, tiny, monkeypatch)
    assert (tiny / "tiny" / output / "trainer_state.json").exists()
