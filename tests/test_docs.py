"""The documentation is tested: the site builds with `mkdocs build --strict` (no broken link or reference), the
README stays one or two screens with its two commands at the top and links that resolve, and every block of the
docs marked to run offline runs as written (bash: `# offline:` blocks; python: blocks opening with `# offline`)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_pairs.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def blocks(language: str, marker: str) -> list[tuple[str, str]]:
    """(page, body) of every fenced ``language`` block of the docs whose first line starts with ``marker``."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for body in re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S):
            if body.startswith(marker):
                found.append((page.name, body))
    return found


def test_the_site_builds_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={"NO_MKDOCS_2_WARNING": "1", **__import__("os").environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("GenerativeJudge") > 1
    recipes = (tmp_path / "site" / "recipes" / "index.html").read_text()
    for folder in (ROOT / "rlhf_pairs" / "recipes").iterdir():
        for recipe in folder.glob("*.yaml"):  # generated from the shipped files: every recipe is on the page
            assert recipe.name in recipes, recipe


def test_the_readme_is_short_with_its_two_commands_first_and_links_that_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert "rlhf-pairs demo" in first_block and "python -m pytest" in first_block
    for target in re.findall(r"\]\(([^)#]+)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("docs")
    assert cli(["tiny-models", str(cwd / "tiny")]) == 0
    return cwd


@pytest.mark.parametrize("page, body", blocks("bash", "# offline:"), ids=lambda x: x if x.endswith(".md") else "")
def test_offline_bash_blocks_run_as_written(page, body, tiny, monkeypatch):
    monkeypatch.chdir(tiny)
    for line in body.splitlines():
        if line.startswith("rlhf-pairs ") and shlex.split(line)[1] != "tiny-models":
            assert cli(shlex.split(line)[1:]) == 0, (page, line)


@pytest.mark.parametrize("page, body", blocks("python", "# offline"), ids=lambda x: x if x.endswith(".md") else "")
def test_offline_python_blocks_run_as_written(page, body, tiny):
    proc = subprocess.run([sys.executable, "-c", body], cwd=tiny, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (page, proc.stderr[-4000:])


def test_there_are_blocks_to_run():
    assert blocks("bash", "# offline:") and blocks("python", "# offline")
