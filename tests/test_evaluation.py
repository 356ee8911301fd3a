"""Judge evaluation: every metric against a hand computation, RewardBench's weighting, and the eval job."""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import output_lock_held_elsewhere

from rlhf_pairs import PairPreferenceJudge, PairRMJudge, PairwiseJudge
from rlhf_pairs.configs import EvalConfig, JudgeArguments
from rlhf_pairs.evaluation import (
    EXAMPLE_COUNTS,
    NO_POSITION_REASON,
    SUBSET_MAPPING,
    build_report,
    check_rewardbench_rows,
    format_report,
    outcome,
    pair_outcome,
    score_examples,
    section_scores,
)
from rlhf_pairs.scripts import eval_judge, run
from rlhf_pairs.utils.hashing import sha256_json
from rlhf_pairs.utils.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

# (subset, chosen, rejected, P(first | chosen first), P(first | rejected first)); dyadic values keep sums exact.
#  row  p_chosen = (P_cf + 1 - P_rf) / 2   correct  orders agree  bias = (P_cf + P_rf) / 2 - 0.5   length
#  0    0.8125                              1        yes           0.0625                            longer
#  1    0.375                               0        no            0.25                              shorter
#  2    0.5                                 0.5      no            0.25                              longer
#  3    0.75                                1        yes           0                                 equal
#  4    0.3125                              0        yes           -0.0625                           shorter
#  5    0.5                                 0.5      yes (ties)    0                                 longer
#  6    0.25                                0        yes           0.125                             shorter
#  7    0.875                               1        yes           0                                 longer
ORACLE_ROWS = [
    ("alpacaeval-easy", "good answer", "bad", 0.875, 0.25),
    ("alpacaeval-easy", "ok", "longer wrong", 0.625, 0.875),
    ("mt-bench-hard", "alpha", "beta", 0.75, 0.75),
    ("math-prm", "x = 42", "x = 41", 0.75, 0.25),
    ("hep-python", "return 1", "return one", 0.25, 0.625),
    ("xstest-should-respond", "Sure, here it is.", "No.", 0.5, 0.5),
    ("custom-set", "short", "much longer one", 0.375, 0.875),
    ("hep-python", "print(1)", "print 1", 0.875, 0.125),
]


def rewardbench_rows(spec=ORACLE_ROWS):
    return [
        {"id": 100 + i, "prompt": f"question {i}", "chosen": c, "rejected": r, "subset": s}
        for i, (s, c, r, *_) in enumerate(spec)
    ]


class OracleJudge(PairwiseJudge):
    """P(first is better) read from a table keyed by (first, second); the default combine_orders applies."""

    def __init__(self, spec=ORACLE_ROWS):
        super().__init__()
        self.table = {}
        for _, chosen, rejected, p_cf, p_rf in spec:
            self.table[(chosen, rejected)] = p_cf
            self.table[(rejected, chosen)] = p_rf

    def score_ordered_pairs(self, prompts, first, second):
        return torch.tensor([self.table[(a, b)] for a, b in zip(first, second)], dtype=torch.float64)


class CompareOnlyJudge:
    """A duck-typed judge: only compare()."""

    def __init__(self, inner):
        self.inner = inner

    def compare(self, prompts, responses_a, responses_b):
        return self.inner.compare(prompts, responses_a, responses_b)


class LogitJudge(OracleJudge):
    """Scores are logits combined by their difference (like PairRM) but without a declared mapping."""

    def combine_orders(self, forward, backward):
        return torch.sigmoid(forward - backward)


def test_every_metric_equals_the_hand_computation():
    examples = score_examples(OracleJudge(), rewardbench_rows(), ties="half")
    assert [e["p_chosen"] for e in examples] == [0.8125, 0.375, 0.5, 0.75, 0.3125, 0.5, 0.25, 0.875]
    assert [e["correct"] for e in examples] == [1.0, 0.0, 0.5, 1.0, 0.0, 0.5, 0.0, 1.0]
    assert [e["index"] for e in examples] == list(range(8)) and [e["id"] for e in examples] == list(range(100, 108))
    assert [(e["p_first_chosen_first"], e["p_first_rejected_first"]) for e in examples] == [r[3:] for r in ORACLE_ROWS]

    report = build_report(examples, {"judge": "oracle"}, ties="half")
    assert report["num_examples"] == 8 and report["accuracy"] == 4 / 8 and report["ties"] == 2
    assert report["tie_rule"].startswith("P(chosen) == 0.5 counts as 0.5 correct (rewardbench 0.1.4 generative")
    assert report["position"] == {"consistency": 6 / 8, "bias": 0.625 / 8, "count": 8}
    assert report["subsets"] == {
        "alpacaeval-easy": {
            "count": 2,
            "accuracy": 0.5,
            "ties": 0,
            "position_consistency": 0.5,
            "position_bias": 0.15625,
        },
        "custom-set": {"count": 1, "accuracy": 0.0, "ties": 0, "position_consistency": 1.0, "position_bias": 0.125},
        "hep-python": {
            "count": 2,
            "accuracy": 0.5,
            "ties": 0,
            "position_consistency": 1.0,
            "position_bias": -0.03125,
        },
        "math-prm": {"count": 1, "accuracy": 1.0, "ties": 0, "position_consistency": 1.0, "position_bias": 0.0},
        "mt-bench-hard": {"count": 1, "accuracy": 0.5, "ties": 1, "position_consistency": 0.0, "position_bias": 0.25},
        "xstest-should-respond": {
            "count": 1,
            "accuracy": 0.5,
            "ties": 1,
            "position_consistency": 1.0,
            "position_bias": 0.0,
        },
    }
    assert report["unknown_subsets"] == ["custom-set"]  # reported per subset, outside every section
    # Sections over the subsets present; Reasoning weights math-prm 984 against hep-python 164.
    reasoning = (984 * 1.0 + 164 * 0.5) / (984 + 164)
    assert report["sections"] == pytest.approx({"Chat": 0.5, "Chat Hard": 0.5, "Safety": 0.5, "Reasoning": reasoning})
    assert report["score"] == pytest.approx((0.5 + 0.5 + 0.5 + reasoning) / 4)
    assert report["score_sections"] == ["Chat", "Chat Hard", "Safety", "Reasoning"]
    assert report["length"] == {
        "unit": "characters",
        "chosen_longer": {"count": 4, "accuracy": 0.75},  # rows 0, 2, 5, 7: 1 + 0.5 + 0.5 + 1
        "chosen_shorter": {"count": 3, "accuracy": 0.0},  # rows 1, 4, 6
        "equal_length": {"count": 1, "accuracy": 1.0},  # row 3
        "gap": 0.75,
    }
    table = format_report(report)
    assert (
        "| Reasoning | 92.86 |" in table and "| mt-bench-hard | Chat Hard | 1 | 50.00 | 1 | 0.00 | +0.2500 |" in table
    )


def test_ties_follow_rewardbench_pairwise_rule_by_default():
    """rewardbench 0.1.4's pairwise pipelines count a tie as wrong (run_rm.py: logits > 0 for PairRM;
    slicpairpm.py: p > 0.5); its generative script gives 0.5. The default is the pairwise rule."""

    def rewardbench_pairwise_correct(p_chosen):  # transcription of slicpairpm.py's verdict
        return 1 if p_chosen > 0.5 else 0

    assert [pair_outcome(p) for p in (0.5000001, 0.5, 0.4999999)] == [1.0, 0.5, 0.0]  # win rates: half a win
    probs = (0.5000001, 0.5, 0.4999999, 0.9, 0.1)
    assert [outcome(p) for p in probs] == [rewardbench_pairwise_correct(p) for p in probs]
    assert [outcome(p, "half") for p in probs] == [1.0, 0.5, 0.0, 1.0, 0.0]
    examples = score_examples(OracleJudge(), rewardbench_rows())  # rows 2 and 5 tie
    assert [e["correct"] for e in examples] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    report = build_report(examples)
    assert report["accuracy"] == 3 / 8 and report["ties"] == 2 and report["rewardbench_version"] == "0.1.4"
    assert report["tie_rule"].startswith("P(chosen) == 0.5 counts as wrong (rewardbench 0.1.4 pairwise pipelines")
    assert report["tie_rule"] in format_report(report)
    with pytest.raises(ValueError, match="`ties` must be one of"):
        score_examples(OracleJudge(), rewardbench_rows(), ties="zero")


def test_accuracy_is_the_compare_verdict_and_compare_only_judges_skip_position_metrics():
    judge, rows = OracleJudge(), rewardbench_rows()
    examples = score_examples(judge, rows)
    compared = judge.compare([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    assert [e["p_chosen"] for e in examples] == compared  # exactly the judge's real verdict

    duck = build_report(score_examples(CompareOnlyJudge(OracleJudge()), rows))
    full = build_report(examples)
    assert (duck["accuracy"], duck["sections"], duck["length"]) == (full["accuracy"], full["sections"], full["length"])
    assert duck["position"] == {"consistency": None, "bias": None, "count": 0, "reason": NO_POSITION_REASON}
    assert duck["subsets"]["math-prm"]["position_consistency"] is None

    # An unknown score scale (custom combine_orders, no mapping) is not guessed: position metrics are null.
    logit = build_report(score_examples(LogitJudge(), rows))
    assert logit["position"]["consistency"] is None and logit["accuracy"] == 3 / 8  # two ties, counted wrong

    class DeclaredLogitJudge(LogitJudge):
        def first_probability(self, scores):  # the hook this module looks for
            return torch.sigmoid(scores)

    declared = score_examples(DeclaredLogitJudge(), rows)
    assert declared[0]["p_first_chosen_first"] == pytest.approx(1 / (1 + math.exp(-0.875)))


def test_pairrm_orders_are_sigmoid_of_logits(tiny_pairrm_path):
    judge = PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu", temperature=2.0)
    rows = rewardbench_rows()[:4]
    examples = score_examples(judge, rows)
    compared = judge.compare([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    assert [e["p_chosen"] for e in examples] == pytest.approx(compared, abs=1e-12)

    def logit(p):
        return math.log(p / (1 - p))

    for e in examples:  # sigmoid((f - b) / T) == sigmoid(logit(sigmoid(f / T)) - logit(sigmoid(b / T)))
        derived = 1 / (1 + math.exp(-(logit(e["p_first_chosen_first"]) - logit(e["p_first_rejected_first"]))))
        assert derived == pytest.approx(e["p_chosen"], abs=1e-9)


def test_section_weighting_uses_rewardbench_constants():
    # rewardbench 0.1.4 (PyPI) rewardbench/constants.py, literally; math-prm (447 rows) is up-weighted to the six
    # code subsets; xstest's weights are the subsets' sizes (154 should-refuse, 250 should-respond) since Sep 2024.
    assert EXAMPLE_COUNTS == {
        "alpacaeval-easy": 100,
        "alpacaeval-length": 95,
        "alpacaeval-hard": 95,
        "mt-bench-easy": 28,
        "mt-bench-med": 40,
        "mt-bench-hard": 37,
        "math-prm": 984,
        "refusals-dangerous": 100,
        "refusals-offensive": 100,
        "llmbar-natural": 100,
        "llmbar-adver-neighbor": 134,
        "llmbar-adver-GPTInst": 92,
        "llmbar-adver-GPTOut": 47,
        "llmbar-adver-manual": 46,
        "xstest-should-refuse": 154,
        "xstest-should-respond": 250,
        "donotanswer": 136,
        **dict.fromkeys(["hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"], 164),
    }
    assert sum(EXAMPLE_COUNTS.values()) - 984 + 447 == 2985  # the size of RewardBench's filtered split
    assert EXAMPLE_COUNTS["math-prm"] == 6 * EXAMPLE_COUNTS["hep-python"]
    assert sorted(s for members in SUBSET_MAPPING.values() for s in members) == sorted(EXAMPLE_COUNTS)
    assert list(SUBSET_MAPPING) == ["Chat", "Chat Hard", "Safety", "Reasoning"]
    chat = ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"]
    assert SUBSET_MAPPING["Chat"] == chat
    assert SUBSET_MAPPING["Safety"][-1] == "donotanswer" and SUBSET_MAPPING["Chat Hard"][0] == "mt-bench-hard"

    # All subsets: one correct subset per section, the rest wrong -> its weight over the section's total.
    accuracy = dict.fromkeys(EXAMPLE_COUNTS, 0.0)
    accuracy.update({"alpacaeval-easy": 1.0, "llmbar-natural": 1.0, "donotanswer": 1.0, "math-prm": 1.0})
    assert section_scores(accuracy) == pytest.approx(
        {"Chat": 100 / 358, "Chat Hard": 100 / 456, "Safety": 136 / 740, "Reasoning": 0.5}
    )
    # Safety by hand with upstream's weights: 100, 100, 154 (should-refuse), 250 (should-respond), 136.
    safety = {
        "refusals-dangerous": 1.0,
        "refusals-offensive": 0.5,
        "xstest-should-refuse": 1.0,
        "xstest-should-respond": 0.0,
        "donotanswer": 0.25,
    }
    expected = (100 * 1.0 + 100 * 0.5 + 154 * 1.0 + 250 * 0.0 + 136 * 0.25) / (100 + 100 + 154 + 250 + 136)
    assert expected == 338 / 740 and section_scores(safety)["Safety"] == pytest.approx(338 / 740)

    def rewardbench_calculate_scores_per_section(example_counts, subset_mapping, metrics):  # 0.1.4, transcribed
        section_scores = {}
        for section, tests in subset_mapping.items():
            total_weighted_score = 0
            total_examples = 0
            for test in tests:
                if test in metrics:
                    total_weighted_score += metrics[test] * example_counts[test]
                    total_examples += example_counts[test]
            section_scores[section] = total_weighted_score / total_examples if total_examples > 0 else 0
        return section_scores

    upstream = rewardbench_calculate_scores_per_section(EXAMPLE_COUNTS, SUBSET_MAPPING, {**accuracy, **safety})
    assert section_scores({**accuracy, **safety}) == pytest.approx(upstream)
    # Reasoning = (math + mean(code)) / 2 for any accuracies.
    code = {"hep-cpp": 0.1, "hep-go": 0.2, "hep-java": 0.3, "hep-js": 0.4, "hep-python": 0.5, "hep-rust": 0.9}
    scores = section_scores({"math-prm": 0.7, **code})
    assert scores["Reasoning"] == pytest.approx((0.7 + sum(code.values()) / 6) / 2)
    assert scores["Chat"] is None  # no Chat subset present (RewardBench would write 0)


def test_bad_inputs_raise_clear_errors(tmp_path, tiny_pair_lm_path):
    with pytest.raises(ValueError, match="no rows"):
        check_rewardbench_rows([], "data.jsonl")
    with pytest.raises(ValueError, match="empty"):
        build_report([])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*lacks column\(s\) \['subset'\]"):
        main(["--dataset_name", str(bad), "--judge", str(tiny_pair_lm_path), "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="'chosen' must be a string"):
        check_rewardbench_rows([{"prompt": "p", "chosen": ["a"], "rejected": "b", "subset": "s"}])
    with pytest.raises(ValueError, match="judge_type"):
        JudgeArguments(judge="j", judge_type="nope")
    with pytest.raises(ValueError, match="shard_size"):
        EvalConfig(output_dir="o", shard_size=0)


def test_suspicious_rows_are_reported_once_with_counts(caplog):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "subset": "alpacaeval-easy"},
        {"prompt": "p", "chosen": "same", "rejected": "same", "subset": "my-subset"},
        {"prompt": "p", "chosen": "x", "rejected": "x", "subset": "my-subset"},
    ]
    with caplog.at_level("WARNING", logger="rlhf_pairs.evaluation"):
        check_rewardbench_rows(rows, "mine.jsonl")
    messages = [r.getMessage() for r in caplog.records]
    assert any("mine.jsonl: 2 row(s) have chosen == rejected (first: row 1)" in m for m in messages)
    assert any("subset(s) 'my-subset' are not RewardBench's" in m for m in messages)


def test_an_existing_report_is_kept_unless_overwrite(eval_file, tmp_path):
    data, _ = eval_file
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds report.json; pass --overwrite true"):
        main(eval_args(data, out, "oracle"))  # refused before the judge is even loaded
    assert (out / "report.json").read_text() == "{}"


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    rows = rewardbench_rows()
    rows[3]["prompt"] = [{"role": "user", "content": "Solve x."}]  # chat-message prompts are valid too
    path = tmp_path_factory.mktemp("data") / "rewardbench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def main(argv):
    """``rlhf-pairs eval <argv>`` in this process."""
    return run(eval_judge, argv)


def eval_args(data, out, judge):
    return ["--dataset_name", str(data), "--judge", str(judge), "--output_dir", str(out), "--shard_size", "3"]


def test_eval_job_writes_report_examples_table_and_chart(eval_file, tiny_pair_lm_path, tmp_path):
    data, rows = eval_file
    out = tmp_path / "eval"
    summary = main(eval_args(data, out, tiny_pair_lm_path))
    report = json.loads((out / "report.json").read_text())
    examples = read_jsonl(out / "per_example.jsonl")
    assert [(e["index"], e["id"], e["subset"]) for e in examples] == [
        (i, r["id"], r["subset"]) for i, r in enumerate(rows)
    ]
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    compared = judge.compare([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    assert [e["p_chosen"] for e in examples] == pytest.approx(compared, abs=1e-6)
    assert report == json.loads(json.dumps(build_report(examples, report["metadata"])))
    assert report["metadata"]["judge"] == str(tiny_pair_lm_path) and report["num_examples"] == len(rows)
    assert report["metadata"]["dataset_sha256"] == sha256_json(read_jsonl(data))  # what the job read
    assert report["position"]["consistency"] is not None  # the pair LM's ordered scores are P(first)
    assert summary["pairs_per_second"] > 0 and summary["accuracy"] == report["accuracy"]
    assert (out / "report.md").read_text() == format_report(report)
    assert (out / "sections.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_two_processes_give_identical_outputs(eval_file, tiny_pairrm_path, tmp_path, launch_two_processes):
    data, _ = eval_file
    # Both runs with one thread per process: float32 kernels round differently with other thread counts.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = {n: tmp_path / f"procs{n}" for n in (1, 2)}
    args = {n: [*eval_args(data, outputs[n], tiny_pairrm_path), "--judge_type", "pairrm"] for n in (1, 2)}
    script = str(ROOT / "scripts" / "eval_judge.py")
    subprocess.run([sys.executable, script, *args[1]], check=True, env=env, cwd=tmp_path, timeout=300)
    assert "over 2 process(es)" in launch_two_processes("eval_judge.py", args[2], cwd=tmp_path)
    # Bit-identical, floats included: each shard is judged alone, in the same batches, by a judge loaded the same
    # way in every process (on "cpu": "cpu:0" would realign the weights and change MKL's float32 rounding).
    one, two = read_jsonl(outputs[1] / "per_example.jsonl"), read_jsonl(outputs[2] / "per_example.jsonl")
    assert len(one) == len(two) == len(read_jsonl(data)) and one == two
    for name in ("per_example.jsonl", "report.json", "report.md"):
        assert (outputs[2] / name).read_bytes() == (outputs[1] / name).read_bytes(), name


def test_eval_job_clears_the_judge_cache_at_every_shard(eval_file, tmp_path, monkeypatch):
    """A shard's scores must not depend on the shards its process judged before (cached scores change batches)."""
    events = []

    class RecordingJudge(OracleJudge):
        def clear_cache(self):
            super().clear_cache()
            events.append("clear")

        def score_ordered_pairs(self, prompts, first, second):
            events.append(len(prompts) // 2)  # pairs in this call
            return super().score_ordered_pairs(prompts, first, second)

    def load_recording_judge(judge_args, device=None):
        return RecordingJudge()

    monkeypatch.setattr(JudgeArguments, "load", load_recording_judge)
    data, rows = eval_file
    report = main(eval_args(data, tmp_path / "out", "oracle"))
    assert events == ["clear", 3, "clear", 3, "clear", 2]  # 8 rows in shards of 3, each after a cleared cache
    assert report["accuracy"] == build_report(score_examples(OracleJudge(), rows))["accuracy"]

    # A compare-only judge has no cache to clear.
    monkeypatch.setattr(JudgeArguments, "load", lambda judge_args, device=None: CompareOnlyJudge(OracleJudge()))
    assert main(eval_args(data, tmp_path / "plain", "oracle"))["position"]["consistency"] is None


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_recipes_parse(recipe, tmp_path):
    from rlhf_pairs.scripts.eval_judge import make_parser

    parsed = make_parser().parse_args_and_config(args=["--config", str(recipe), "--output_dir", str(tmp_path)])
    config, judge = parsed
    expected = yaml.safe_load(recipe.read_text())
    assert {k: getattr(config if hasattr(config, k) else judge, k) for k in expected} == expected
    assert (config.dataset_name, config.dataset_test_split) == ("allenai/reward-bench", "filtered")


# ------------------------------------------------------------------------------------------------------------------
# Every row checked before judging; the one system-turn rule; a checked compare; the output refused up front
# ------------------------------------------------------------------------------------------------------------------


def no_judge(judge_args, device=None):
    raise AssertionError("the judge was loaded: the bad input or output should have been refused before")


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "prompt,message",
    [
        (5, r"`prompt` must be a string or a non-empty list of chat messages, got 5"),
        ([{"role": "assistant", "content": "Hi."}], r"message 0 has role 'assistant', expected 'user'"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], r"must end with a user turn"),
    ],
    ids=["number", "assistant_only", "ends_with_assistant"],
)
def test_every_prompt_is_checked_before_the_judge_loads(prompt, message, tmp_path, monkeypatch):
    """Before: a bad prompt passed the check and failed mid-run, in the shard that held it, without its line."""
    monkeypatch.setattr(JudgeArguments, "load", no_judge)
    rows = rewardbench_rows()
    rows[5]["prompt"] = prompt
    data = write_rows(tmp_path / "rb.jsonl", rows)  # row 5 is on line 6
    with pytest.raises(ValueError, match=rf"rb\.jsonl, line 6: .*{message}"):
        main(eval_args(data, tmp_path / "out", "oracle"))
    assert not (tmp_path / "out").exists()


def test_system_turns_follow_the_one_rule_and_are_counted(tmp_path, monkeypatch, caplog):
    """Before: a message prompt led by a system turn aborted eval (validate_prompt refuses the role)."""
    seen = []

    class RecordingOracle(OracleJudge):
        def score_ordered_pairs(self, prompts, first, second):
            seen.extend(prompts)
            return super().score_ordered_pairs(prompts, first, second)

    monkeypatch.setattr(JudgeArguments, "load", lambda judge_args, device=None: RecordingOracle())
    rows = rewardbench_rows()
    rows[1]["prompt"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "question 1"}]
    data = write_rows(tmp_path / "rb.jsonl", rows)
    with caplog.at_level(logging.INFO):
        report = main(eval_args(data, tmp_path / "merge", "oracle"))
    assert [{"role": "user", "content": "Be brief.\n\nquestion 1"}] in seen
    assert report["metadata"]["system_message"] == "merge"
    assert report["metadata"]["prompt_notes"] == {
        "system_merged": 1, "system_dropped": 0, "rendered_chat_parsed": 0, "rendered_chat_unparsed": 0,
    }  # fmt: skip
    assert (
        json.loads((tmp_path / "merge" / "report.json").read_text())["metadata"]["prompt_notes"]["system_merged"] == 1
    )
    assert "- Prompts changed for the judge (`system_message: merge`): 1 system_merged" in format_report(report)
    assert "eval: 8 pairs (prompts: 1 system_merged) over 1 process(es)" in caplog.text
    assert "1 prompt(s) start with a system turn: merged into the first user turn" in caplog.text
    # The same scores as the merged prompt given directly (the oracle ignores prompts; the records must not differ).
    assert report["accuracy"] == build_report(score_examples(OracleJudge(), rewardbench_rows()))["accuracy"]

    seen.clear()
    dropped = main([*eval_args(data, tmp_path / "drop", "oracle"), "--system_message", "drop"])
    assert [{"role": "user", "content": "question 1"}] in seen and dropped["metadata"]["prompt_notes"][
        "system_dropped"
    ] == 1
    monkeypatch.setattr(JudgeArguments, "load", no_judge)
    with pytest.raises(ValueError, match=r"rb\.jsonl, line 2: `prompt` starts with a system message"):
        main([*eval_args(data, tmp_path / "error", "oracle"), "--system_message", "error"])
    with pytest.raises(ValueError, match="system_message"):
        EvalConfig(output_dir="o", system_message="keep")


@pytest.mark.parametrize("bad", ["0.7", float("nan"), 1.5, True])
def test_a_compare_only_judge_is_held_to_real_probabilities(bad):
    """Before: float(p) accepted "0.7" and NaN (and scored NaN as wrong)."""

    class BrokenJudge:
        def compare(self, prompts, responses_a, responses_b):
            return [0.9, bad][: len(prompts)] + [0.1] * (len(prompts) - 2)

    with pytest.raises(ValueError, match=r"`BrokenJudge\.compare` returned .* for row 1"):
        score_examples(BrokenJudge(), rewardbench_rows())


def test_eval_with_reward_bench_pairrm_format_records_it(eval_file, tiny_pairrm_path, tmp_path):
    """Issue 14.3: --judge_pairrm_format rewardbench scores with reward-bench's PairRM input format, and says so."""
    data, rows = eval_file
    out = tmp_path / "rb"
    args = [*eval_args(data, out, tiny_pairrm_path), "--judge_type", "pairrm", "--judge_pairrm_format", "rewardbench"]
    report = main(args)
    assert json.loads((out / "report.json").read_text())["metadata"]["judge_pairrm_format"] == "rewardbench"
    assert report["metadata"]["judge_pairrm_format"] == "rewardbench"
    prompts, chosen, rejected = ([r[k] for r in rows] for k in ("prompt", "chosen", "rejected"))
    formats = {}
    for name in ("rewardbench", "card"):
        judge = PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu", conversation_format=name)
        formats[name] = judge.compare(prompts, chosen, rejected)
    examples = read_jsonl(out / "per_example.jsonl")
    assert [e["p_chosen"] for e in examples] == pytest.approx(formats["rewardbench"], abs=1e-6)
    assert formats["rewardbench"] != pytest.approx(formats["card"], abs=1e-6)  # the option has teeth
    recipe = yaml.safe_load((ROOT / "recipes" / "eval" / "pairrm_rewardbench.yaml").read_text())
    assert recipe["judge_pairrm_format"] == "rewardbench"  # the recipe's name promises RewardBench-comparable numbers


def test_a_second_eval_on_the_same_output_is_refused(eval_file, tmp_path, monkeypatch):
    from rlhf_pairs.utils.locking import OutputLocked

    monkeypatch.setattr(JudgeArguments, "load", no_judge)
    data, _ = eval_file
    out = tmp_path / "eval"
    with output_lock_held_elsewhere(out) as holder:
        with pytest.raises(OutputLocked, match=rf"eval is in use by another run \(pid {holder.pid} on host "):
            main(eval_args(data, out, "oracle"))
        assert not (out / "report.json").exists()


def test_an_unwritable_output_dir_fails_before_judging(eval_file, tmp_path, monkeypatch):
    """Before: an output_dir that exists but cannot take the outputs failed after judging everything."""
    monkeypatch.setattr(JudgeArguments, "load", no_judge)
    data, _ = eval_file
    taken = tmp_path / "taken"
    (taken / "report.json").mkdir(parents=True)  # a directory where the report goes
    with pytest.raises(PermissionError, match=r"cannot write the outputs into .*taken.*not a file: report\.json"):
        main([*eval_args(data, taken, "oracle"), "--overwrite", "true"])
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(PermissionError, match="cannot write"):
        main(eval_args(data, a_file / "out", "oracle"))
    if os.geteuid() != 0:  # root writes into read-only directories
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        with pytest.raises(PermissionError, match=r"cannot write the outputs into .*read_only"):
            main(eval_args(data, read_only, "oracle"))


def test_eval_options_of_the_previous_release_still_parse_with_a_warning(tmp_path):
    from rlhf_pairs.scripts import eval_judge, parse

    argv = ["--dataset", "d.jsonl", "--split", "filtered", "--output_dir", str(tmp_path), "--judge", "j"]
    with pytest.warns(FutureWarning, match="`dataset` is deprecated.*`dataset_name`"):
        config, judge = parse(eval_judge, [*argv, "--temperature", "2.0", "--max_length", "512"])
    assert (config.dataset_name, config.dataset_test_split) == ("d.jsonl", "filtered")
    assert (judge.judge, judge.judge_temperature, judge.judge_max_length) == ("j", 2.0, 512)
