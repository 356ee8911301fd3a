"""MkDocs hooks: pages that are generated from the files they describe, so they cannot drift.

- ``<!-- include: PATH -->`` in a page is replaced by the file at PATH (relative to the repository root), its
  headings moved one level down.
- ``<!-- recipes -->`` is replaced by every shipped recipe folder: its README and a table of its YAML files with
  the comment lines that open each one.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "rlhf_pairs" / "recipes"


def _demote(markdown: str) -> str:
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if not fenced and line.startswith("#") else line)
    return "\n".join(out)


def _header(path: Path) -> str:
    """The comment lines that open a recipe YAML, as one line (commands in code spans)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines).replace("|", "\\|").replace("[", "\\[")  # plain text, not links or table cells
    return text or "(no header comment)"


def _recipes() -> str:
    parts = []
    for folder in sorted(p for p in RECIPES.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        text = (folder / "README.md").read_text() if (folder / "README.md").exists() else ""
        title, _, rest = text.partition("\n")
        if title.startswith("# "):
            parts.append(f"## {title[2:]} (`{folder.name}/`)\n")
            text = rest
        else:
            parts.append(f"## `{folder.name}/`\n")
        parts.append(_demote(text))
        rows = [f"| `{p.name}` | {_header(p)} |" for p in sorted(folder.glob("*.yaml"))]
        parts.append("\n| recipe file | what it says about itself |\n| --- | --- |\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = re.sub(
        r"<!-- include: (\S+) -->", lambda m: _demote((ROOT / m.group(1)).read_text()), markdown
    )
    return markdown.replace("<!-- recipes -->", _recipes())
