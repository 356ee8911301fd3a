"""Output files written atomically: a reader never sees half a file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed onto ``path`` when the block succeeds and removed
    when it fails. The temporary name is hidden (``.<name>.*.tmp``), so writers that infer a format from the
    suffix must be told the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    """Write ``rows`` as JSON lines to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json_atomic(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False, default=str))


class JsonlError(ValueError):
    """A JSON-lines file that cannot be read as rows: names the file, the line and what to do."""


def read_jsonl(path: str | Path, line_numbers: list[int] | None = None) -> list[dict]:
    """The rows (JSON objects) of a JSON-lines file; blank lines are skipped and a UTF-8 byte-order mark is allowed.

    ``line_numbers``, when given, receives each row's 1-based line in the file (for messages about a row).
    Raises :class:`JsonlError` (a ``ValueError``) naming the file and line for bytes that are not UTF-8, invalid
    JSON, a line that is not an object, or a lone surrogate escape (``"\\ud800"``) that no file can be written with.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise JsonlError(f"{path}, line {line}: not UTF-8 text ({err.reason}); save the file as UTF-8") from None
    rows = []
    # Lines end at "\n" only: str.splitlines() also breaks at U+2028, U+2029 and U+0085, which JSON strings may hold
    # raw (our own writer leaves them so), and would cut such a row in two.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise JsonlError(
                f"{path}, line {number}: invalid JSON ({err.msg} at column {err.colno}); each line must hold one "
                "JSON object"
            ) from None
        if not isinstance(row, dict):
            raise JsonlError(f"{path}, line {number}: a JSON {type(row).__name__}, expected an object ({{...}})")
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonlError(
                f"{path}, line {number}: holds a lone surrogate escape (e.g. \\ud800), which is not text; fix or "
                "drop that string"
            ) from None
        rows.append(row)
        if line_numbers is not None:
            line_numbers.append(number)
    return rows
