"""Stable digests: fingerprints of finished work and seeds derived from a base seed (SHA-256, never Python's
salted ``hash``), so they are the same in every process and every run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_json(obj) -> str:
    """The SHA-256 hex digest of ``obj`` as canonical JSON (sorted keys, non-JSON values by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (e.g. round and chunk index)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _is_hidden(relative: Path) -> bool:
    """Whether any part of ``relative`` is hidden (``.git``, ``.cache``, ``.foo.tmp``): datasets' data-file patterns
    skip such paths, and so do content fingerprints."""
    return any(part.startswith(".") for part in relative.parts)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (read every time: a size-and-mtime memo would miss a same-size rewrite within
    the file system's timestamp granularity)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_content_sha256(path: str | Path) -> str:
    """A SHA-256 of what a local file or directory holds: for a directory, the relative path and bytes of every
    file under it except hidden ones (``.git``, ``.cache``: what datasets' data-file patterns skip too), so any
    edited, added, removed or renamed data file changes it, and two folders with the same name but other files
    differ."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(path)))
    return sha256_json([[p.relative_to(path).as_posix(), file_sha256(p)] for p in files])
