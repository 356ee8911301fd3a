"""One loader for every job: a local .jsonl/.json file reads the same in train-pm, train-pairrm, the online jobs,
rank and eval (bad files named by file and line, a UTF-8 byte-order mark accepted), and the online jobs check every
prompt with the rule every job applies before anything trains."""

import json
import logging
from pathlib import Path

import datasets
import pytest
from conftest import load_script

from rlhf_pairs.configs import OnlineConfig
from rlhf_pairs.data_utils import load_rows, load_split
from rlhf_pairs.trainer.online import load_prompt_splits

ROOT = Path(__file__).resolve().parents[1]
PAIR = {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."}
# (file bytes after one good line, what the error says about line 2)
BAD_LINES = {
    "invalid_json": (b'{"prompt": "x", "chosen": \n', r"invalid JSON"),
    "not_an_object": (b'["x", "y"]\n', r"a JSON list, expected an object"),
    "lone_surrogate": (b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n', r"lone surrogate"),
    "not_utf8": (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n', r"not UTF-8"),
}


def bad_file(tmp_path, case: str, suffix: str = ".jsonl") -> Path:
    path = tmp_path / f"{case}{suffix}"
    path.write_bytes(json.dumps(PAIR).encode() + b"\n" + BAD_LINES[case][0])
    return path


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_train_pm_names_the_file_and_line_of_a_bad_input(case, tiny_pair_lm_path, tmp_path):
    """Before: datasets' JSON reader raised a bare DatasetGenerationError (UnicodeDecodeError for non-UTF-8 bytes)."""
    data = bad_file(tmp_path, case)
    with pytest.raises(ValueError, match=rf"{case}\.jsonl, line 2: .*{BAD_LINES[case][1]}"):
        load_script("train_pair_pm").main(
            ["--config", str(ROOT / "recipes/pair_pm/tiny-cpu.yaml"), "--model_name_or_path", str(tiny_pair_lm_path),
             "--dataset_name", str(data), "--output_dir", str(tmp_path / "out")]
        )  # fmt: skip


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_every_job_reads_a_local_file_alike(suffix, tmp_path):
    """load_split (train-pm, train-pairrm, online jobs) gives the rows load_rows (rank, eval, iterate) gives, with
    the same line numbers; a byte-order mark is fine in both; columns missing from some rows are None."""
    rows = [PAIR, {**PAIR, "prompt": [{"role": "user", "content": "Say hi."}], "id": 7}]
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(json.dumps(r) for r in rows).encode() + b"\n")
    split_lines, row_lines = [], []
    dataset = load_split(str(path), split="whatever", line_numbers=split_lines)
    assert isinstance(dataset, datasets.Dataset)
    assert dataset.to_list() == [{**PAIR, "id": None}, rows[1]]  # mixed prompt types kept, as datasets' reader
    assert load_rows(str(path), line_numbers=row_lines) == rows
    assert split_lines == row_lines == [1, 3]
    with pytest.raises(ValueError, match="no configurations"):
        load_split(str(path), "some_config")
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows[:1]))
    assert load_split(str(array)).to_list() == rows[:1]
    array.write_text("[\n" + json.dumps(PAIR) + ",\n{oops}\n]")
    with pytest.raises(ValueError, match=r"array\.json, line 3: invalid JSON"):
        load_split(str(array))
    parquet = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list([PAIR]).to_parquet(str(parquet))
    assert load_split(str(parquet)).to_list() == [PAIR]  # other formats still go through datasets


@pytest.mark.parametrize("case", ["invalid_json", "not_utf8"])
def test_online_prompt_loader_names_the_file_and_line(case, tmp_path):
    data = bad_file(tmp_path, case, ".json")
    with pytest.raises(ValueError, match=rf"{case}\.json, line 2: .*{BAD_LINES[case][1]}"):
        load_prompt_splits(OnlineConfig(dataset_name=str(data)))


def test_online_prompts_are_checked_up_front_with_the_system_turn_rule(tiny_pair_lm_path, tmp_path, caplog):
    system = {"role": "system", "content": "Be brief."}
    rows = [
        {"prompt": [{"role": "user", "content": "a"}]},
        {"prompt": [system, {"role": "user", "content": "b"}]},
        {"prompt": [{"role": "user", "content": "c"}]},
    ]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="rlhf_pairs.trainer.online"):
        train, held_out = load_prompt_splits(OnlineConfig(dataset_name=str(data), win_rate_prompts=1))
    assert train["prompt"] == [r["prompt"] for r in rows[:2]] and held_out["prompt"] == [rows[2]["prompt"]]
    assert "1 prompt(s) start with a system turn: merged into the first user turn" in caplog.text
    with pytest.raises(ValueError, match=r"prompts\.jsonl, line 2: .*system message.*'error'"):
        load_prompt_splits(OnlineConfig(dataset_name=str(data), system_message="error"))

    # A prompt the judge cannot read stops the job before the policy (here: a path that does not exist) loads.
    data.write_text(data.read_text() + json.dumps({"prompt": [{"role": "assistant", "content": "d"}]}) + "\n")
    from rlhf_pairs.scripts import grpo, run

    with pytest.raises(ValueError, match=r"prompts\.jsonl, line 4: .*role 'assistant', expected 'user'"):
        run(grpo, [
            "--config", str(ROOT / "recipes/grpo/tiny_cpu.yaml"), "--model_name_or_path", str(tmp_path / "no-model"),
            "--judge", str(tiny_pair_lm_path), "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
        ])  # fmt: skip


def test_the_reward_reads_prompts_as_every_job_does():
    """A chat string already rendered with a recognised template reaches the judge as its messages, as in rank."""
    from rlhf_pairs.rewards import PairwiseRewardFunction

    seen = []

    class Recording:
        def compare(self, prompts, a, b):
            seen.extend(prompts)
            return [0.5] * len(prompts)

    rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    PairwiseRewardFunction(Recording(), layout="groups", num_generations=2)(
        prompts=[rendered] * 2, completions=["a", "b"]
    )
    assert seen == [[{"role": "user", "content": "Be brief.\n\nhi"}]]
    with pytest.raises(ValueError, match=r"prompts\[0\].*'error'"):
        PairwiseRewardFunction(Recording(), layout="groups", system_message="error")(
            prompts=[rendered] * 2, completions=["a", "b"]
        )


def two_config_folder(parent: Path, second: list[dict]) -> Path:
    """A local dataset folder named ``two-configs`` whose README declares two configurations (as on the Hub)."""
    root = parent / "two-configs"
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "first.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n")
    (root / "data" / "second.jsonl").write_text("".join(json.dumps(row) + "\n" for row in second))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files: data/first.jsonl\n"
        "- config_name: second\n  data_files: data/second.jsonl\n---\n"
    )
    return root


def test_a_local_folder_is_read_as_it_is_on_disk_now(tmp_path):
    """datasets 5.1/5.2 cache a folder with README configs under its name and config only: another folder with the
    same name, or an edited file (even one of the same size), returned the rows read first. Before the fix all three
    reads below after the first returned [{"prompt": "b"}]."""
    first = two_config_folder(tmp_path / "a", [{"prompt": "b"}])
    assert load_rows(str(first), "second") == [{"prompt": "b"}]
    other = two_config_folder(tmp_path / "b", [{"prompt": "B", "responses": ["x"]}])
    assert load_rows(str(other), "second") == [{"prompt": "B", "responses": ["x"]}]
    two_config_folder(tmp_path / "a", [{"prompt": "c"}])  # same size, same folder: an edit in place
    assert load_rows(str(first), "second") == [{"prompt": "c"}]
    assert load_rows(str(first), "first") == [{"prompt": "a"}]
    # A config gaining a split is seen too, by the online jobs' split listing.
    from rlhf_pairs.data_utils import split_names

    assert split_names(str(first), "second") == ["train"]
    (first / "data" / "second-test.jsonl").write_text(json.dumps({"prompt": "t"}) + "\n")
    readme = (
        (first / "README.md")
        .read_text()
        .replace(
            "data_files: data/second.jsonl",
            "data_files:\n  - split: train\n    path: data/second.jsonl\n  - split: test\n    path: data/second-test.jsonl",
        )
    )
    (first / "README.md").write_text(readme)
    assert sorted(split_names(str(first), "second")) == ["test", "train"]
    assert load_rows(str(first), "second", "test") == [{"prompt": "t"}]
    # A plain folder (no README configs) and hidden files: a hidden file changes nothing datasets reads.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.jsonl").write_text(json.dumps({"prompt": "p1"}) + "\n")
    assert load_rows(str(plain)) == [{"prompt": "p1"}]
    (plain / "train.jsonl").write_text(json.dumps({"prompt": "p2"}) + "\n")
    assert load_rows(str(plain)) == [{"prompt": "p2"}]


def test_the_test_session_caches_are_its_own():
    """No test reads or writes the user's caches: datasets, the Hub and our own cache point into the session's
    temporary directory (set by conftest before anything imported datasets)."""
    import huggingface_hub
    from conftest import CACHE_ROOT

    from rlhf_pairs.embedded import default_cache_dir

    for path in (datasets.config.HF_DATASETS_CACHE, huggingface_hub.constants.HF_HUB_CACHE, default_cache_dir()):
        assert Path(path).is_relative_to(CACHE_ROOT), path
