"""Stable digests: fingerprints of finished work and seeds derived from a base seed (SHA-256, never Python's
salted ``hash``), so they are the same in every process and every run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

# Content digests of local inputs (a judge's or policy's files, a template file), added to fingerprints after runs
# had been recorded without them: one that only one side holds is left out of a comparison (:func:`comparable`).
CONTENT_KEYS = ("judge_sha256", "judge_template_sha256", "model_sha256")
MEMO_MIN_AGE_S = 2.0  # a file changed (ctime) more recently is hashed but its digest not memoized


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


def cache_dir() -> Path:
    """This package's cache: ``$RLHF_PAIRS_CACHE``, else ``~/.cache/rlhf_pairs``."""
    return Path(os.environ.get("RLHF_PAIRS_CACHE", Path.home() / ".cache" / "rlhf_pairs"))


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def memoized_file_sha256(path: str | Path) -> str:
    """:func:`file_sha256` of a big file read at every start (a judge's or policy's weights), memoized in
    ``<cache>/file-sha256/`` under its absolute path while its size, modification and change times, inode and device
    stay those recorded: an unchanged 16 GB judge is read once per machine, and again after it is rewritten. A file
    changed within the last :data:`MEMO_MIN_AGE_S` seconds is hashed but not memoized, so a same-size rewrite
    within the file system's timestamp granularity cannot keep the memo's stat; an unwritable cache only costs the
    memo."""
    path = Path(path).resolve()
    entry = cache_dir() / "file-sha256" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    key = _stat_key(path)
    try:
        memo = json.loads(entry.read_text(encoding="utf-8"))
        if memo.get("path") == str(path) and memo.get("stat") == key:
            return memo["sha256"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    if key[0] > 1 << 30:  # minutes for a big judge on a slow disk: say why the start waits
        logging.getLogger(__name__).info("fingerprinting %s (%.1f GB; once, until it changes)", path, key[0] / 1e9)
    digest = file_sha256(path)
    # Its change time, not its modification time: a copy that kept an old mtime (cp -p, rsync -a) is new too.
    if time.time() - key[2] / 1e9 > MEMO_MIN_AGE_S and _stat_key(path) == key:  # and unchanged while read
        from rlhf_pairs.utils.io import write_json_atomic

        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(entry, {"path": str(path), "stat": key, "sha256": digest})
        except OSError:
            pass
    return digest


def local_model_sha256(path: str | Path) -> str:
    """A SHA-256 of a local model: for a directory, the name and bytes of each non-hidden file at its top (what
    ``from_pretrained`` reads: weights, config, tokenizer, adapter; not ``checkpoint-*`` folders or a ``.cache``), for
    a file its bytes. Weights are hashed once per machine and again only after they change
    (:func:`memoized_file_sha256`). Recorded in fingerprints, so work done with a model that was retrained or
    replaced in place is not reused."""
    path = Path(path)
    if path.is_file():
        return memoized_file_sha256(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return sha256_json([[p.name, memoized_file_sha256(p)] for p in files])


def comparable(recorded: dict, current: dict) -> tuple[dict, dict]:
    """``recorded`` and ``current`` without the content digests (:data:`CONTENT_KEYS`) that only one of them holds,
    to compare the two: work recorded before a digest was part of the fingerprint resumes, and so does work whose
    input is not there to digest now (an initial policy deleted after the rounds that read it; a stage that still
    needs it fails loading it, naming it). A digest both hold must match."""

    def drop(fingerprint: dict, other: dict) -> dict:
        return {k: v for k, v in fingerprint.items() if k not in CONTENT_KEYS or k in other}

    return drop(recorded, current), drop(current, recorded)


def changed_inputs(recorded: dict, current: dict, inputs: dict[str, str]) -> list[str]:
    """What changed among ``inputs`` (a fingerprint key holding a content digest -> the data it digests, for
    messages), comparing two fingerprints made :func:`comparable`."""
    return [what for key, what in inputs.items() if key in current and recorded.get(key) != current.get(key)]


def judge_file_digests(judge: str, template: str | None = None) -> dict[str, str]:
    """``judge_sha256`` of a local judge (:func:`local_model_sha256`) and ``judge_template_sha256`` of a template
    file, each present only when that is a local path; what a fingerprint and a served judge's ``/info`` record."""
    digests = {}
    if Path(judge).exists():
        digests["judge_sha256"] = local_model_sha256(judge)
    if template is not None and Path(template).is_file():
        digests["judge_template_sha256"] = file_sha256(template)
    return digests
