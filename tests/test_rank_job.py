"""The rank job: output format, resume (stopped and killed), refusal of changed arguments, 1 vs 2 processes,
parquet output and dataset configurations."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import output_lock_held_elsewhere

from rlhf_pairs import PairPreferenceJudge, rank_candidates
from rlhf_pairs.cli import main as cli
from rlhf_pairs.configs import JudgeArguments, RankConfig
from rlhf_pairs.data_utils import load_rows
from rlhf_pairs.utils.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
WORDS = "sun moon river stone light code tree bird wind rain".split()


@pytest.fixture(scope="module")
def candidates_file(tmp_path_factory):
    rows = []
    for i in range(9):
        n = [0, 1, 2, 3, 4, 5, 6, 8, 3][i]
        responses = [" ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(1 + (i * j) % 5)) for j in range(n)]
        prompt = f"Say something about {WORDS[i]}." if i != 4 else [{"role": "user", "content": "Hi there"}]
        rows.append({"id": i, "prompt": prompt, "responses": responses})
    rows[8]["responses"] = ["same", "same", "other"]  # duplicates are common with low-temperature sampling
    path = tmp_path_factory.mktemp("data") / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def rank_args(data, out, judge, *extra):
    return [
        "rank",
        "--dataset_name",
        str(data),
        "--output",
        str(out),
        "--judge",
        str(judge),
        "--shard_size",
        "2",
        *extra,
    ]


def run_rank_script(args, cwd, kill_at=None):
    """``python scripts/rank.py <args>`` in a fresh process with one thread (as each process of the 2-process
    launch has), optionally with ``RLHF_PAIRS_KILL_AT``; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RLHF_PAIRS_KILL_AT", None)
    if kill_at:
        env["RLHF_PAIRS_KILL_AT"] = kill_at
    cmd = [sys.executable, str(ROOT / "scripts" / "rank.py"), *map(str, args)]
    return subprocess.run(cmd, env=env, cwd=cwd, timeout=600, capture_output=True, text=True)


def run_rank_script_ok(args, cwd):
    proc = run_rank_script(args, cwd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc.stdout + proc.stderr


def test_rank_output_follows_the_ranking(candidates_file, tiny_pair_lm_path, tmp_path):
    data, rows = candidates_file
    out = tmp_path / "ranked.jsonl"
    cli(rank_args(data, out, tiny_pair_lm_path))
    ranked = read_jsonl(out)
    assert [r["id"] for r in ranked] == [r["id"] for r in rows]  # input order, nothing lost or duplicated
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    expected = rank_candidates(judge, [r["prompt"] for r in rows], [r["responses"] for r in rows], seed=0)
    for row, exp in zip(ranked, expected):
        assert (row["best"], row["worst"], row["num_comparisons"], row["skipped"]) == (
            exp.best,
            exp.worst,
            exp.num_comparisons,
            exp.skipped,
        )
        n = len(row["responses"])
        if n >= 2:
            chosen, rejected = row["responses"][exp.best], row["responses"][exp.worst]
            if isinstance(row["prompt"], list):  # TRL's conversational preference format, as the prompt is
                chosen = [{"role": "assistant", "content": chosen}]
                rejected = [{"role": "assistant", "content": rejected}]
            assert (row["chosen"], row["rejected"]) == (chosen, rejected)
            m = len(set(row["responses"]))  # knockout plays the distinct texts
            assert row["num_comparisons"] == (0 if m == 1 else m - 1 + (m + 1) // 2 - 1)
            # Knockout's rewards: 1 for the best, 0 for the worst, 0.5 for the others (one per response).
            assert row["rewards"] == [1.0 if j == exp.best else 0.0 if j == exp.worst else 0.5 for j in range(n)]
        else:
            assert row["chosen"] is None and row["skipped"] == "fewer than 2 candidates"
            assert row["rewards"] == [0.5] * n


def test_resume_after_a_stop_gives_the_same_output(candidates_file, tiny_pair_lm_path, tmp_path):
    data, _ = candidates_file
    full, part = tmp_path / "full" / "ranked.jsonl", tmp_path / "part" / "ranked.jsonl"
    cli(rank_args(data, full, tiny_pair_lm_path))
    cli(rank_args(data, part, tiny_pair_lm_path, "--max_shards", "2"))  # a time-boxed run stops after 2 shards
    shard_dir = Path(str(part) + ".shards")
    assert not part.exists() and len(list(shard_dir.glob("shard-*.jsonl"))) == 2
    (shard_dir / ".shard-00002.jsonl.123.tmp").write_text('{"torn": ')  # what a kill mid-write leaves behind
    cli(rank_args(data, part, tiny_pair_lm_path))
    assert part.read_bytes() == full.read_bytes()


def test_changed_arguments_over_finished_shards_are_refused(candidates_file, tiny_pair_lm_path, tmp_path):
    data, _ = candidates_file
    out = tmp_path / "ranked.jsonl"
    cli(rank_args(data, out, tiny_pair_lm_path, "--max_shards", "1"))
    with pytest.raises(ValueError, match=r"changed: seed \(0 -> 1\)\);.*--overwrite true"):
        cli(rank_args(data, out, tiny_pair_lm_path, "--seed", "1"))
    cli(rank_args(data, out, tiny_pair_lm_path, "--seed", "1", "--overwrite", "true"))
    assert len(read_jsonl(out)) == 9
    # Overwriting again with other arguments and stopping early leaves no output of the discarded shards behind.
    cli(rank_args(data, out, tiny_pair_lm_path, "--seed", "2", "--overwrite", "true", "--max_shards", "1"))
    assert not out.exists()


def test_a_judge_saved_again_into_its_folder_is_refused_over_finished_shards(candidates_file, tmp_path):
    """Shards ranked by a judge folder whose files changed since (retrained into the same path) are another judge's:
    refused naming the folder, not joined with the new judge's. A marker written before the judge's digest was
    recorded still resumes, and records it from then on."""
    from rlhf_pairs.testing_utils import build_tiny_pair_lm

    data, _ = candidates_file
    judge, out = build_tiny_pair_lm(tmp_path / "judge", seed=5), tmp_path / "ranked.jsonl"
    cli(rank_args(data, out, judge, "--max_shards", "1"))
    marker = Path(str(out) + ".shards") / "fingerprint.json"
    recorded = json.loads(marker.read_text())
    legacy = {k: v for k, v in recorded.items() if k != "judge_sha256"}
    marker.write_text(json.dumps(legacy))  # as the previous release wrote it
    cli(rank_args(data, out, judge, "--max_shards", "1"))  # resumes: one more shard
    assert len(list(marker.parent.glob("shard-*.jsonl"))) == 2
    assert json.loads(marker.read_text()) == recorded
    build_tiny_pair_lm(judge, seed=6)
    with pytest.raises(
        ValueError,
        match=rf"2 finished shard\(s\) made with another judge: the judge's files in {judge.resolve()} changed since "
        r"\(changed: judge_sha256 .*\); restore them to reuse them, pass --overwrite true",
    ):
        cli(rank_args(data, out, judge))
    cli(rank_args(data, out, judge, "--overwrite", "true"))
    assert len(read_jsonl(out)) == 9


def test_a_failed_start_does_not_block_the_fixed_rerun(candidates_file, tiny_pair_lm_path, tmp_path, monkeypatch):
    """A typo in the judge path (or a bad row) fails before any shard: the corrected command just runs, and the
    same judge named by another path (relative, trailing slash) is the same judge."""
    data, _ = candidates_file
    out = tmp_path / "ranked.jsonl"
    with pytest.raises(OSError):
        cli(rank_args(data, out, tmp_path / "no-such-judge"))
    assert not (tmp_path / "ranked.jsonl.shards" / "fingerprint.json").exists()
    cli(rank_args(data, out, tiny_pair_lm_path, "--max_shards", "1"))
    monkeypatch.chdir(tiny_pair_lm_path.parent)
    cli(rank_args(data, out, f"{tiny_pair_lm_path.name}/"))  # relative, with a slash: resumes, no refusal
    assert len(read_jsonl(out)) == 9


def test_fixing_a_bad_row_reranks_only_its_shard(tiny_pair_lm_path, tmp_path):
    """Every row is checked before the first judge call, located by its line in the file; after the fix, the
    finished shards whose rows did not change are kept and only the changed shard is ranked again."""
    rows = [{"prompt": f"Say {w}.", "responses": [w, w + " " + w, "no"]} for w in WORDS[:6]]
    data = tmp_path / "candidates.jsonl"
    lines = [json.dumps(r) for r in rows]
    data.write_text("\n".join([*lines[:5], "", json.dumps({"prompt": "Say x.", "responses": ["a", 7]})]) + "\n")
    out = tmp_path / "ranked.jsonl"
    with pytest.raises(ValueError, match=r"candidates.jsonl, line 7: responses\[1\] must be a string, got int"):
        cli(rank_args(data, out, tiny_pair_lm_path))
    assert not Path(str(out) + ".shards").exists() or not list(Path(str(out) + ".shards").glob("shard-*"))
    data.write_text("\n".join([*lines[:5], json.dumps({"prompt": "Say x.", "responses": ["a", "7"]})]) + "\n")
    cli(rank_args(data, out, tiny_pair_lm_path))
    shards = sorted(Path(str(out) + ".shards").glob("shard-*.jsonl"))
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    data.write_text("\n".join([*lines[:5], json.dumps({"prompt": "Say y.", "responses": ["b", "8"]})]) + "\n")
    cli(rank_args(data, out, tiny_pair_lm_path))
    after = {p.name: p.stat().st_mtime_ns for p in shards}
    assert [name for name in stamps if after[name] != stamps[name]] == ["shard-00002.jsonl"]
    assert read_jsonl(out)[-1]["prompt"] == "Say y."


def test_bad_jsonl_is_named_by_file_and_line(tiny_pair_lm_path, tmp_path):
    out = tmp_path / "o.jsonl"
    cases = {
        b'{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "p", "responses": [}\n': r"line 2: invalid JSON",
        b'{"prompt": "p", "responses": ["a", "b"]}\n["not", "an object"]\n': r"line 2: a JSON list, expected an object",
        b'{"prompt": "p", "responses": ["a", "\xff"]}\n': r"line 1: not UTF-8 text",
        b'{"prompt": "p", "responses": ["a", "\\ud800"]}\n': r"line 1: holds a lone surrogate",
    }
    for i, (content, message) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.jsonl"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=rf"bad{i}\.jsonl, {message}"):
            cli(rank_args(bad, out, tiny_pair_lm_path))
    with_bom = tmp_path / "bom.jsonl"
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "responses": ["a", "b"]}).encode() + b"\n")
    cli(rank_args(with_bom, out, tiny_pair_lm_path))  # a byte-order mark is fine
    assert read_jsonl(out)[0]["chosen"] in ("a", "b")


def test_text_with_unicode_line_separators_is_ranked_and_read_back(tiny_pair_lm_path, tmp_path):
    """U+2028, U+2029 and U+0085 are ordinary characters inside a JSON string (our writer leaves them raw): a row
    holding them is one row, in the input, in the shards and in the output."""
    from rlhf_pairs.utils.io import write_jsonl_atomic

    responses = ["one\u2028two", "three\u2029four", "five\x85six"]
    data, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    write_jsonl_atomic(data, [{"prompt": "p\u2028q", "responses": responses}, {"prompt": "r", "responses": ["a", "b"]}])
    assert "\u2028" in data.read_text(encoding="utf-8")  # written raw, not escaped
    assert [r["prompt"] for r in read_jsonl(data)] == ["p\u2028q", "r"]
    cli(rank_args(data, out, tiny_pair_lm_path))
    first, second = read_jsonl(out)
    assert first["responses"] == responses and first["chosen"] in responses and second["prompt"] == "r"


def test_a_second_run_on_the_same_output_is_refused_while_the_first_lives(candidates_file, tiny_pair_lm_path, tmp_path):
    """The lock names the holder; it dies with its process, so a killed run's lock is taken over without clean-up."""
    from rlhf_pairs.utils.locking import OutputLocked, output_lock

    out = tmp_path / "ranked.jsonl"
    with output_lock_held_elsewhere(out) as holder:
        with pytest.raises(OutputLocked, match=rf"in use by another run \(pid {holder.pid} on host "):
            with output_lock(out):
                pass
        with pytest.raises(OutputLocked, match=rf"ranked.jsonl is in use by another run \(pid {holder.pid}"):
            cli(rank_args(candidates_file[0], out, tiny_pair_lm_path))
        assert not out.exists()
    with output_lock(out):  # the dead holder's lock is free again
        with pytest.raises(OutputLocked):
            with output_lock(out):  # and held exclusively, also within one process
                pass


def test_two_processes_give_identical_output(candidates_file, tiny_pair_lm_path, tmp_path, launch_two_processes):
    data, _ = candidates_file
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    # One thread on both sides: CPU float reductions depend on the thread count (DEVELOPERS.md).
    assert "over 1 process(es)" in run_rank_script_ok(rank_args(data, one, tiny_pair_lm_path)[1:], cwd=tmp_path)
    output = launch_two_processes("rank.py", rank_args(data, two, tiny_pair_lm_path)[1:], cwd=tmp_path)
    assert "over 2 process(es)" in output
    assert two.read_bytes() == one.read_bytes()
    shards = sorted(Path(str(two) + ".shards").glob("shard-*.jsonl"))
    assert len(shards) == 5


def test_bad_rows_and_configs_raise_clear_errors(tiny_pair_lm_path, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "candidates": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match="'responses'"):
        cli(rank_args(bad, tmp_path / "o.jsonl", tiny_pair_lm_path))
    with pytest.raises(ValueError, match="judge_type"):
        JudgeArguments(judge="j", judge_type="nope")
    with pytest.raises(ValueError, match="ranking_method"):
        RankConfig(dataset_name="d", output="o.jsonl", ranking_method="nope")
    with pytest.raises(ValueError, match=".jsonl or .parquet"):
        RankConfig(dataset_name="d", output="o.csv")


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "rank").glob("*.yaml")), ids=lambda p: p.name)
def test_rank_recipes_parse(recipe, tmp_path):
    from rlhf_pairs.scripts.rank import make_parser

    values = yaml.safe_load(recipe.read_text())
    fields = set(RankConfig.__dataclass_fields__) | set(JudgeArguments.__dataclass_fields__)
    assert set(values) <= fields, "a recipe's keys are RankConfig and JudgeArguments fields"
    base = ["--config", str(recipe), "--dataset_name", "d.jsonl", "--output", str(tmp_path / "o.jsonl")]
    config, judge = make_parser().parse_args_and_config(args=base)
    assert {key: getattr(config if key in RankConfig.__dataclass_fields__ else judge, key) for key in values} == values
    # A flag overrides the YAML value; the other YAML values stay.
    assert values["ranking_method"] == "knockout" and values["shard_size"] != 3
    args = [*base, "--ranking_method", "round_robin", "--shard_size", "3"]
    config, judge = make_parser().parse_args_and_config(args=args)
    assert (config.ranking_method, config.shard_size) == ("round_robin", 3)
    assert (judge.judge, judge.judge_type, config.seed) == (values["judge"], values["judge_type"], values["seed"])


def test_round_robin_scores_are_the_rankings_scores(candidates_file, tiny_pair_lm_path, tmp_path):
    data, rows = candidates_file
    out = tmp_path / "ranked.jsonl"
    cli(rank_args(data, out, tiny_pair_lm_path, "--ranking_method", "round_robin", "--shard_size", "100"))  # one shard
    ranked = read_jsonl(out)
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    prompts, candidates = [r["prompt"] for r in rows], [r["responses"] for r in rows]
    expected = rank_candidates(judge, prompts, candidates, method="round_robin")
    assert [row["scores"] for row in ranked] == [exp.scores for exp in expected]  # same batches: same floats
    assert [(row["best"], row["worst"], row["margin"]) for row in ranked] == [
        (exp.best, exp.worst, exp.margin) for exp in expected
    ]
    for row in ranked:
        n = len(row["responses"])
        if n >= 2:
            assert len(row["scores"]) == n and row["num_comparisons"] == n * (n - 1) // 2
            assert row["scores"][row["best"]] == max(row["scores"])
        else:
            assert row["scores"] is None


def repeated_rows_file(directory: Path) -> Path:
    """Rows [A, B, A, C]: with 2-row shards, row A is ranked in shard 0 and again, next to other rows, in shard 1."""
    row_a = {"prompt": "Say something about sun.", "responses": ["sun moon", "river stone light code", "tree"]}
    row_b = {
        "prompt": "Write a haiku about the sea. " * 8,
        "responses": ["The gull writes its name on wind; " * 6, "x", "Waves fold into foam. " * 3],
    }
    row_c = {"prompt": "q", "responses": ["a b c d e f g " * 9, "z"]}
    path = directory / "repeated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [row_a, row_b, row_a, row_c]))
    return path


def test_a_row_repeated_across_shards_resumes_byte_identical(tiny_pair_lm_path, tmp_path):
    """The judge's score cache must not carry over from shard 0 to shard 1: a resumed run starts with an empty one."""
    data = repeated_rows_file(tmp_path)
    full, part = tmp_path / "full" / "ranked.jsonl", tmp_path / "part" / "ranked.jsonl"
    cli(rank_args(data, full, tiny_pair_lm_path, "--ranking_method", "round_robin"))
    cli(rank_args(data, part, tiny_pair_lm_path, "--ranking_method", "round_robin", "--max_shards", "1"))
    assert not part.exists()
    cli(rank_args(data, part, tiny_pair_lm_path, "--ranking_method", "round_robin"))
    assert part.read_bytes() == full.read_bytes()
    # The same row next to other rows: the same ranking, scores equal up to fp32 batch noise.
    first, _, again, _ = read_jsonl(full)
    assert (again["best"], again["worst"]) == (first["best"], first["worst"])
    assert again["scores"] == pytest.approx(first["scores"], abs=1e-5)


def test_killed_run_resumes_to_the_uninterrupted_output(candidates_file, tiny_pair_lm_path, tmp_path):
    """SIGKILL after the 2nd shard is written (``RLHF_PAIRS_KILL_AT=:shard#2``), re-run the same command."""
    data, rows = candidates_file
    full, killed = tmp_path / "full" / "ranked.jsonl", tmp_path / "killed" / "ranked.jsonl"
    run_rank_script_ok(rank_args(data, full, tiny_pair_lm_path)[1:], cwd=tmp_path)

    args = rank_args(data, killed, tiny_pair_lm_path)[1:]
    proc = run_rank_script(args, cwd=tmp_path, kill_at=":shard#2")
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-6000:]
    shard_dir = Path(str(killed) + ".shards")
    assert sorted(p.name for p in shard_dir.glob("shard-*.jsonl")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert not killed.exists()

    output = run_rank_script_ok(args, cwd=tmp_path)
    assert "9 prompts" in output
    assert killed.read_bytes() == full.read_bytes()
    assert [r["id"] for r in read_jsonl(killed)] == [r["id"] for r in rows]  # none duplicated or missing
    assert len(list(shard_dir.glob("shard-*.jsonl"))) == 5


def test_parquet_output_reads_back_with_datasets(tiny_pair_lm_path, tmp_path):
    import datasets

    rows = [
        {"id": 0, "prompt": "Say hi", "responses": ["hi", "hello there", "hey"]},
        {"id": 1, "prompt": "Name a tree", "responses": ["oak"]},
        {"id": 2, "prompt": "Count", "responses": ["one two", "one"]},
    ]
    data = tmp_path / "candidates.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for method in ("knockout", "round_robin"):
        as_jsonl, as_parquet = tmp_path / f"{method}.jsonl", tmp_path / f"{method}.parquet"
        cli(rank_args(data, as_jsonl, tiny_pair_lm_path, "--ranking_method", method))
        cli(rank_args(data, as_parquet, tiny_pair_lm_path, "--ranking_method", method))
        back = datasets.Dataset.from_parquet(str(as_parquet)).to_list()
        assert back == read_jsonl(as_jsonl)
        assert [r["id"] for r in back] == [0, 1, 2] and back[1]["skipped"] == "fewer than 2 candidates"
        assert back[0]["chosen"] == back[0]["responses"][back[0]["best"]]


def test_parquet_output_of_mixed_prompts_is_refused_before_ranking(tiny_pair_lm_path, tmp_path):
    rows = [
        {"prompt": "Say hi", "responses": ["hi", "hello there"]},
        {"prompt": [{"role": "user", "content": "Hi there"}], "responses": ["a", "b b"]},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ranked.parquet"
    with pytest.raises(ValueError, match=r"column 'prompt'.*str \(row 0\), list \(row 1\).*\.jsonl output"):
        cli(rank_args(data, out, "/nonexistent/judge"))  # raised before the judge is even loaded
    assert not out.exists() and not Path(str(out) + ".shards").exists()
    cli(rank_args(data, tmp_path / "ranked.jsonl", tiny_pair_lm_path))  # jsonl keeps both prompt forms
    assert [r["prompt"] for r in read_jsonl(tmp_path / "ranked.jsonl")] == [r["prompt"] for r in rows]


def config_dataset_dir(directory: Path) -> Path:
    """A local dataset directory with two configurations declared in its README (as on the Hub)."""
    root = directory / "two-configs"
    root.mkdir()
    (root / "first.jsonl").write_text(json.dumps({"prompt": "a", "responses": ["x", "y"]}) + "\n")
    second = [{"prompt": "b", "responses": ["x", "y", "z"]}, {"prompt": "c", "responses": ["u", "v"]}]
    (root / "second.jsonl").write_text("".join(json.dumps(r) + "\n" for r in second))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files: first.jsonl\n"
        "- config_name: second\n  data_files: second.jsonl\n---\n"
    )
    return root


def test_dataset_config_picks_the_configuration(tiny_pair_lm_path, tmp_path):
    source = config_dataset_dir(tmp_path)
    assert [r["prompt"] for r in load_rows(str(source), "second", "train")] == ["b", "c"]
    assert [r["prompt"] for r in load_rows(str(source), config="first")] == ["a"]
    out = tmp_path / "ranked.jsonl"
    cli(rank_args(source, out, tiny_pair_lm_path, "--dataset_config", "second"))
    assert [(r["prompt"], r["skipped"]) for r in read_jsonl(out)] == [("b", None), ("c", None)]
    local = tmp_path / "local.jsonl"
    local.write_text(json.dumps({"prompt": "a", "responses": ["x"]}) + "\n")
    assert load_rows(str(local)) == [{"prompt": "a", "responses": ["x"]}]
    with pytest.raises(ValueError, match="'second'.*no configurations"):
        load_rows(str(local), "second")


def test_options_of_the_previous_release_still_parse_with_a_warning(tmp_path):
    from rlhf_pairs.scripts import parse, rank

    old = tmp_path / "old_recipe.yaml"
    old.write_text("judge: j\nmethod: round_robin\ndtype: float32\ntemperature: 2.0\nshard_size: 3\n")
    argv = ["--config", str(old), "--dataset", "d.jsonl", "--split=test", "--output", str(tmp_path / "o.jsonl")]
    with pytest.warns(FutureWarning, match="`method` is deprecated.*`ranking_method`"):
        config, judge = parse(rank, argv)
    assert (config.dataset_name, config.dataset_train_split, config.ranking_method, config.shard_size) == (
        "d.jsonl",
        "test",
        "round_robin",
        3,
    )
    assert (judge.judge, judge.judge_dtype, judge.judge_temperature) == ("j", "float32", 2.0)
    # The new names parse without a warning, and a flag still overrides the (renamed) recipe.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config, _ = parse(rank, ["--config", "pair_lm_knockout", "--dataset_name", "d.jsonl", "--output", "o.jsonl"])
    with pytest.warns(FutureWarning):
        config, _ = parse(rank, [*argv, "--ranking_method", "knockout"])
    assert config.ranking_method == "knockout"


def test_a_missing_local_file_is_named_as_such(tiny_pair_lm_path, tmp_path):
    """Not datasets' "Repo id must be in the form 'repo_name'" or "Couldn't reach 'nope.jsonl' on the Hub"."""
    for missing in ("nope.jsonl", str(tmp_path / "data" / "candidates.parquet"), "./prompts"):
        with pytest.raises(FileNotFoundError, match=rf"dataset '{re.escape(missing)}': no such file or directory"):
            load_rows(missing)
    with pytest.raises(FileNotFoundError, match="no such file"):
        cli(rank_args("nope.jsonl", tmp_path / "o.jsonl", tiny_pair_lm_path))


def test_a_bad_input_leaves_no_lock_or_shard_next_to_the_output(tmp_path):
    out = tmp_path / "ranked.jsonl"
    with pytest.raises(FileNotFoundError):
        cli(rank_args(tmp_path / "missing.jsonl", out, "judge"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no ranked.jsonl.lock, no ranked.jsonl.shards
