"""Installed as a wheel, not only as a checkout: the wheel holds the package with its recipes and launcher configs,
and a shipped recipe runs by name from outside the checkout, in this process or through ``accelerate launch``."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rlhf_pairs.scripts import recipe_path, resolve_config_argument, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The wheel built from this checkout, installed (non-editable, no dependencies) into its own directory."""
    root = tmp_path_factory.mktemp("wheel")
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(root),
        str(ROOT),
    ]
    subprocess.run(build, check=True, cwd=root, timeout=300)
    (wheel,) = root.glob("rlhf_pairs-*.whl")
    target = root / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target)]
    subprocess.run([*install, str(wheel)], check=True, cwd=root, timeout=300)
    return wheel, target


def test_the_wheel_holds_the_package_its_recipes_and_nothing_else(installed_wheel):
    wheel, _ = installed_wheel
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name for name in names if name.startswith("rlhf_pairs/recipes/")}
    checkout = {f"rlhf_pairs/{p.relative_to(ROOT / 'rlhf_pairs')}" for p in (ROOT / "recipes").resolve().rglob("*.*")}
    assert shipped == checkout and "rlhf_pairs/recipes/accelerate/zero3.yaml" in shipped
    assert {"rlhf_pairs/data/demo_prompts.jsonl", "rlhf_pairs/scripts/rank.py", "rlhf_pairs/cli.py"} <= set(names)
    assert not [name for name in names if name.split("/")[0] in ("tests", "scripts", "bench", "recipes")]


def test_the_console_script_is_console_script_and_runs(installed_wheel, tmp_path):
    """``rlhf-pairs`` is ``rlhf_pairs.cli:console_script`` (``console_main``'s user errors as one line, and a launched
    worker's exit without the interpreter's teardown), not a stale ``cli:main``: the wheel's entry point, loaded and
    run from the installed copy as the generated script does."""
    import configparser

    wheel, target = installed_wheel
    (name,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(name).decode())
    assert dict(entry_points["console_scripts"]) == {"rlhf-pairs": "rlhf_pairs.cli:console_script"}
    code = (
        "import sys\nfrom importlib.metadata import EntryPoint\n"
        "main = EntryPoint('rlhf-pairs', sys.argv[2], 'console_scripts').load()\n"
        "assert sys.modules[main.__module__].__file__.startswith(sys.argv[1])  # the wheel's copy\n"
        "sys.argv = ['rlhf-pairs', 'nope']\nsys.exit(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    value = entry_points["console_scripts"]["rlhf-pairs"]
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target), value], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown job 'nope'" in proc.stderr, proc.stderr


def installed_run(target, cwd, *argv):
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhf_pairs.cli", *map(str, argv)]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc.stdout + proc.stderr


def test_a_shipped_recipe_runs_by_name_from_the_installed_wheel(installed_wheel, tiny_pair_lm_path, tmp_path):
    _, target = installed_wheel
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import rlhf_pairs; print(rlhf_pairs.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(target), where  # the wheel's copy, not the checkout's
    data = tmp_path / "candidates.jsonl"
    rows = [
        {"prompt": f"Name a {w}.", "responses": ["one", "two words", "three short words"]} for w in ("fruit", "tree")
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--config", "pair_lm_knockout", "--dataset_name", data, "--judge", tiny_pair_lm_path]
    installed_run(target, tmp_path, "rank", *common, "--output", tmp_path / "here.jsonl")
    ranked = [json.loads(line) for line in (tmp_path / "here.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in ranked] == [r["prompt"] for r in rows] and all(r["chosen"] for r in ranked)

    # --accelerate_config names a shipped launcher config: the command starts `accelerate launch` on the job.
    from conftest import free_port

    launch = ["--accelerate_config", "cpu_2proc", "--main_process_port", free_port()]
    log = installed_run(target, tmp_path, "rank", *common, "--output", tmp_path / "launched.jsonl", *launch)
    assert "accelerate.commands.launch --config_file" in log and "over 2 process(es)" in log
    assert (tmp_path / "launched.jsonl").read_text() == (tmp_path / "here.jsonl").read_text()


def test_config_names_resolve_to_shipped_recipes(tmp_path):
    assert "pair_lm_knockout" in shipped_recipes("rank") and "zero3" in shipped_recipes("accelerate")
    assert Path(recipe_path("pair_lm_knockout", "rank")).name == "pair_lm_knockout.yaml"
    assert Path(recipe_path("rank/pairrm_knockout.yaml", "eval")).parent.name == "rank"
    own = tmp_path / "mine.yaml"
    own.write_text("seed: 1\n")
    assert resolve_config_argument(["--config", str(own), "--seed", "2"], "rank") == [
        "--config",
        str(own),
        "--seed",
        "2",
    ]
    flag, path = resolve_config_argument(["--config=tiny_cpu"], "iterative_dpo")  # the two-token form TRL reads
    assert flag == "--config" and path.endswith("iterative_dpo/tiny_cpu.yaml")
    with pytest.raises(ValueError, match="neither a file nor a shipped recipe.*pair_lm_knockout"):
        recipe_path("nope", "rank")
