"""The GPU bench suite runs (tiny shapes, CPU) and its reference loops agree with our judges: keeps bench/ honest."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_judges.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_judges", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_suite_runs_and_matches_the_reference_loops(bench, tmp_path):
    out = tmp_path / "report.json"
    argv = ["--size", "tiny", "--device", "cpu", "--pairs", "5", "--prompt-tokens", "20", "--response-tokens", "40",
            "--tournament-prompts", "2", "--tournament-sizes", "4", "5", "--out", str(out)]  # fmt: skip
    report = bench.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert "| ours |" in out.with_suffix(".md").read_text()
    assert report["env"]["torch"] and "bench_judges.py" in report["env"]["command"]
    for judge in report["judges"]:
        methods = {m["method"]: m for m in judge["methods"]}
        assert set(methods) == {"card", "batched", "ours"}
        for name in ("batched", "ours"):
            # Same probabilities as the card's own loop (fp32 on CPU), and real timings.
            assert methods[name]["max_abs_diff_vs_card"] < 1e-5
            assert methods[name]["pairs_per_s"] > 0 and methods[name]["speedup_vs_card"] > 0
    counts = {(r["n"], r["method"]): r for r in report["tournament"]}
    assert counts[(4, "knockout")]["comparisons_per_prompt"] == 4  # n-1 + ceil(n/2)-1
    # n = 5: 6 matches, or 5 when the round-1 bye holder is the best (it never enters the losers' bracket).
    assert 5 <= counts[(5, "knockout")]["comparisons_per_prompt"] <= 6
    assert counts[(5, "round_robin")]["comparisons_per_prompt"] == 10
    assert all(r["counts_ok"] for r in report["tournament"])
    # Every match is judged in both orders: 2 ordered pairs per comparison reach the model (no cache here).
    assert all(
        r["ordered_pairs_scored"] == 2 * r["comparisons_per_prompt"] * r["prompts"] for r in report["tournament"]
    )


def test_flop_counts_follow_the_architecture(bench):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=10)  # fmt: skip
    # per token: 2 layers x 2 x (2*8*8 + 2*8*4 + 3*8*16) = 2304; attention 2*2*L*(L+1)*8; head 2*8*10.
    assert bench.pair_lm_flops(config, 3) == 2304 * 3 + 2 * 2 * 3 * 4 * 8 + 160
