"""The package is typed (PEP 561): ``py.typed`` ships in the wheel, and mypy (pyproject's ``[tool.mypy]``, also run by
``.ci/run``) passes on the modules of the public names."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Modules of public names that mypy does not check yet (their hints are still to be written); do not add to this.
NOT_YET_CHECKED: set[str] = set()


def mypy_files() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"])


def exports(init: Path) -> dict[str, str]:
    """The ``_EXPORTS`` table (public name -> module) of a package's ``__init__.py``, read without importing it."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{init} has no _EXPORTS")


def module_file(module: str) -> str:
    """``rlhf_pairs.a.b`` -> ``rlhf_pairs/a/b.py`` (or its package's ``__init__.py``)."""
    path = Path(*module.split("."))
    return str(path / "__init__.py") if (ROOT / path).is_dir() else f"{path}.py"


def public_modules() -> set[str]:
    """The files that define the names of ``rlhf_pairs.__all__`` (the judges through their own table)."""
    files = set()
    for module in set(exports(ROOT / "rlhf_pairs" / "__init__.py").values()):
        files.add(module_file(module))
        if module == "rlhf_pairs.judges":
            files |= {module_file(f"rlhf_pairs.judges{sub}") for sub in exports(ROOT / module_file(module)).values()}
    files.add("rlhf_pairs/rewards/pairwise_reward.py")  # what rewards/__init__.py re-exports
    return files


def test_mypy_checks_the_modules_of_the_public_names():
    checked = mypy_files()
    assert (ROOT / "rlhf_pairs" / "py.typed").is_file()
    assert all((ROOT / f).is_file() for f in checked), sorted(f for f in checked if not (ROOT / f).is_file())
    missing = public_modules() - checked - NOT_YET_CHECKED
    assert not missing, f"add these modules of public names to [tool.mypy] files: {sorted(missing)}"
    assert not checked & NOT_YET_CHECKED, "checked now: remove them from NOT_YET_CHECKED"


def test_mypy_passes_on_the_public_api(monkeypatch):
    api = pytest.importorskip("mypy.api")
    monkeypatch.chdir(ROOT)  # [tool.mypy] paths are relative to the checkout
    stdout, stderr, status = api.run([])
    assert status == 0, stdout + stderr


def test_py_typed_ships_in_the_wheel(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    (wheel,) = tmp_path.glob("rlhf_pairs-*.whl")
    assert "rlhf_pairs/py.typed" in zipfile.ZipFile(wheel).namelist()
