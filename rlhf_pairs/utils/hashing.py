"""Stable digests: fingerprints of finished work and seeds derived from a base seed (SHA-256, never Python's
salted ``hash``), so they are the same in every process and every run."""

from __future__ import annotations

import hashlib
import json


def sha256_json(obj) -> str:
    """The SHA-256 hex digest of ``obj`` as canonical JSON (sorted keys, non-JSON values by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (e.g. round and chunk index)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
