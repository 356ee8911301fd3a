"""Console output (rlhf_pairs.utils.verbosity, rlhf_pairs.trainer.console): a job prints its progress bars, one line
per stage and its summary; no trainer log dicts, no deprecation warnings from our calls into transformers and TRL,
and the demo prints its report. RLHF_PAIRS_VERBOSITY=debug gives transformers' own printing back."""

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from rlhf_pairs.utils.verbosity import VERBOSITY_ENV, console_verbosity, filter_known_noise

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("generate", "rank", "pairs", "train", "eval")
PROMPTS = ["Name a color.", "Say hello.", "What is 2+2?", "Describe a cat.", "Tell me a joke.", "Say thanks."]
DEPRECATION = re.compile(r"\b(FutureWarning|DeprecationWarning|PendingDeprecationWarning)\b")
TRAINER_DICT = re.compile(r"\{'(loss|train_runtime|eval_\w+|grad_norm)'")  # transformers' Printer/ProgressCallback


def printed_lines(text: str) -> list[str]:
    """The lines a terminal would show, a progress bar's redraws (carriage returns) counted as lines."""
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


@pytest.fixture(scope="module")
def iterate_run(tmp_path_factory, tiny_pair_lm_path):
    """One round of the tiny iterate recipe through ``python -m rlhf_pairs.cli``, at the default verbosity."""
    root = tmp_path_factory.mktemp("console")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(VERBOSITY_ENV, None)
    cmd = [sys.executable, "-m", "rlhf_pairs.cli", "iterate", "--config", "tiny_cpu", "--rounds", "1"]
    cmd += ["--model_name_or_path", str(tiny_pair_lm_path), "--judge", str(tiny_pair_lm_path)]
    cmd += ["--dataset_name", str(prompts), "--output_dir", str(root / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return printed_lines(proc.stdout + proc.stderr), root / "out"


def test_a_tiny_iterate_run_prints_bars_a_line_per_stage_and_the_summary(iterate_run):
    lines, out = iterate_run
    assert not [line for line in lines if DEPRECATION.search(line)]
    assert not [line for line in lines if TRAINER_DICT.search(line)]
    assert not [line for line in lines if "Setting accelerator to CPU" in line]  # DeepSpeed's, on a CPU machine
    for stage in STAGES:
        assert sum(line.endswith(f"round_1/{stage}: running") for line in lines) == 1, stage
        assert sum(re.search(rf"round_1/{stage}: done in [\d.]+ s$", line) is not None for line in lines) == 1, stage
    # the train stage says what it did in one line, instead of the trainer's records
    (trained,) = [line for line in lines if re.match(r"round_1/train: \d+ steps in [\d.]+ s, loss ", line)]
    assert any("round_1/generate candidates" in line for line in lines)  # our progress bars stay
    assert any("ranking shards" in line for line in lines)
    (summary,) = [line for line in lines if "round 1: {" in line]
    assert json.loads(summary.split("round 1: ", 1)[1])["train/steps"] >= 1
    # The records were not printed but are all kept.
    history = json.loads((out / "round_1" / "train" / "log_history.json").read_text())
    assert [h for h in history if "loss" in h] and any("train_runtime" in h for h in history)


def test_shipped_recipes_use_the_activation_checkpointing_name():
    for recipe in sorted((ROOT / "rlhf_pairs" / "recipes").glob("*/*.yaml")):
        keys = set(yaml.safe_load(recipe.read_text()) or {})
        assert not keys & {"gradient_checkpointing", "gradient_checkpointing_kwargs"}, recipe


def iterate_args(recipe):
    return ["--config", str(recipe), "--model_name_or_path", "p", "--judge", "j", "--dataset_name", "d"]


def test_an_old_recipe_with_gradient_checkpointing_still_parses_and_is_told_the_new_name(tmp_path):
    """Ours parse without a warning; a user's recipe with the old key keeps working (transformers maps it until v6)
    and transformers' FutureWarning names the new key: it is about the user's file, so it is not filtered."""
    from rlhf_pairs.scripts import iterate, parse

    shipped = ROOT / "rlhf_pairs" / "recipes" / "iterative_dpo" / "tiny_cpu.yaml"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_noise("info")
        training = parse(iterate, [*iterate_args(shipped), "--output_dir", str(tmp_path / "a")])[2]
    assert training.activation_checkpointing is True and training.gradient_checkpointing is True
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]

    values = yaml.safe_load(shipped.read_text())
    del values["activation_checkpointing"]
    values["gradient_checkpointing"] = False
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(values))
    with pytest.warns(FutureWarning, match="`gradient_checkpointing` is deprecated.*`activation_checkpointing`"):
        filter_known_noise("info")
        training = parse(iterate, [*iterate_args(old), "--output_dir", str(tmp_path / "b")])[2]
    assert training.activation_checkpointing is False and training.gradient_checkpointing is False


def test_the_known_noise_filter_hides_only_the_libraries_calls_of_deprecated_aliases(tiny_pair_lm_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_noise("info")
        assert model.is_gradient_checkpointing is False  # what TRL 1.16 calls around every reference forward
        assert model.is_activation_checkpointing is False
        warnings.warn("`gradient_checkpointing` is deprecated (one of ours)", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`gradient_checkpointing` is deprecated (one of ours)"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_noise("debug")  # installs nothing
        assert model.is_gradient_checkpointing is False
    assert [w.category for w in caught] == [FutureWarning]


def test_verbosity_is_one_variable_and_a_bad_value_names_it(monkeypatch):
    monkeypatch.delenv(VERBOSITY_ENV, raising=False)
    assert console_verbosity() == "info"
    for value in ("debug", "info", "warning", " WARNING "):
        monkeypatch.setenv(VERBOSITY_ENV, value)
        assert console_verbosity() == value.strip().lower()
    monkeypatch.setenv(VERBOSITY_ENV, "loud")
    with pytest.raises(ValueError, match=f"{VERBOSITY_ENV}='loud'.*debug, info, warning"):
        console_verbosity()


@pytest.fixture
def tiny_trainer(tiny_pair_lm_path, tmp_path):
    """A plain transformers Trainer on the tiny LM: 4 equal-length rows, 2 steps, a log record per step."""
    import datasets
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    def build(disable_tqdm=False):
        rows = datasets.Dataset.from_list([{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]}] * 4)
        args = TrainingArguments(
            output_dir=str(tmp_path / "trainer"), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
            report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=disable_tqdm,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path)
        return Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)

    return build


def test_the_trainer_prints_its_bar_and_summary_lines_not_its_records(tiny_trainer, monkeypatch, capfd, caplog):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from rlhf_pairs.trainer.console import StepProgressCallback, TrainingSummaryCallback, quiet_trainer_console

    monkeypatch.delenv(VERBOSITY_ENV, raising=False)
    caplog.set_level(logging.INFO, logger="rlhf_pairs")
    trainer = tiny_trainer()
    quiet_trainer_console(trainer, "demo/train")
    quiet_trainer_console(trainer, "demo/train")  # idempotent
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert ProgressCallback not in kinds and PrinterCallback not in kinds
    assert kinds.count(StepProgressCallback) == 1 and kinds.count(TrainingSummaryCallback) == 1
    trainer.train()
    trainer.evaluate()
    out, err = capfd.readouterr()
    assert not TRAINER_DICT.search(out + err)
    assert "demo/train: 100%" in err  # the step bar, named
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        re.fullmatch(r"demo/train: 2 steps in [\d.]+ s, loss [\d.]+ \(first logged step\) -> .*", m) for m in messages
    )
    assert any(re.fullmatch(r"demo/train: evaluation at step 2: eval_loss [\d.]+", m) for m in messages)
    assert len([h for h in trainer.state.log_history if "loss" in h]) == 2  # the records are all kept

    monkeypatch.setenv(VERBOSITY_ENV, "warning")  # no bar, no lines
    trainer = tiny_trainer()
    quiet_trainer_console(trainer)
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert not {ProgressCallback, PrinterCallback, StepProgressCallback, TrainingSummaryCallback} & set(kinds)

    monkeypatch.setenv(VERBOSITY_ENV, "debug")  # transformers' own printing
    trainer = tiny_trainer(disable_tqdm=True)
    quiet_trainer_console(trainer)
    assert PrinterCallback in [type(c) for c in trainer.callback_handler.callbacks]
    capfd.readouterr()
    trainer.train()
    assert TRAINER_DICT.search(capfd.readouterr().out)


def test_the_demo_prints_its_report_without_library_bars_or_trainer_records(tiny_pair_lm_path, tmp_path, capfd, caplog):
    import datasets
    from transformers.utils import logging as hf_logging

    from rlhf_pairs.cli import main as cli

    caplog.set_level(logging.INFO, logger="rlhf_pairs")
    saved = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    saved_datasets_level = datasets.logging.get_verbosity()
    argv = ["demo", "--policy", str(tiny_pair_lm_path), "--judge", str(tiny_pair_lm_path), "--no-check-judge"]
    argv += ["--output-dir", str(tmp_path / "demo"), "--prompts", "4", "--eval-prompts", "2", "--candidates", "3"]
    argv += ["--max-new-tokens", "6", "--steps", "2"]
    try:
        assert cli(argv) == 0
    finally:  # setup_console changed this process's libraries: give the other tests theirs back
        hf_logging.set_verbosity(saved[0])
        datasets.logging.set_verbosity(saved_datasets_level)
        (hf_logging.enable_progress_bar if saved[1] else hf_logging.disable_progress_bar)()
        (datasets.enable_progress_bars if saved[2] else datasets.disable_progress_bars)()
        logging.getLogger("rlhf_pairs").setLevel(logging.NOTSET)
    out, err = capfd.readouterr()
    lines = printed_lines(out + err)
    assert "rlhf-pairs demo: iterative DPO with a pair judge" in out and "example pairs" in out
    assert not [line for line in lines if TRAINER_DICT.search(line) or DEPRECATION.search(line)]
    assert not [line for line in lines if line.startswith(("Loading weights", "Writing model shards", "Tokenizing"))]
    assert any(line.startswith("round_1/train: 100%") for line in lines)  # the demo's step bar
    messages = [r.getMessage() for r in caplog.records]  # pytest's handler takes the log lines in this process
    assert any(re.match(r"round_1/train: 2 steps in [\d.]+ s, loss ", m) for m in messages)


def test_warning_verbosity_shows_no_progress_bars(tiny_pair_lm_path, tmp_path):
    """`RLHF_PAIRS_VERBOSITY=warning`: no bars of ours (ranking shards, judge batches); `info` shows them."""
    import json
    import os
    import subprocess
    import sys

    data = tmp_path / "candidates.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "responses": ["a", "b", "c"]}) + "\n" for i in range(4)))

    def rank(verbosity: str, out: str) -> str:
        env = {**os.environ, "RLHF_PAIRS_VERBOSITY": verbosity, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "rlhf_pairs.cli", "rank", "--dataset_name", str(data), "--output", out]
        proc = subprocess.run([*cmd, "--judge", str(tiny_pair_lm_path), "--shard_size", "1"], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    assert "ranking shards" in rank("info", str(tmp_path / "info.jsonl"))
    quiet = rank("warning", str(tmp_path / "warning.jsonl"))
    assert "ranking shards" not in quiet and "rank: 4 prompts" not in quiet
    assert (tmp_path / "warning.jsonl").read_bytes() == (tmp_path / "info.jsonl").read_bytes()
