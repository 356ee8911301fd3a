"""Stage directories of a long job: written atomically, marked complete, tied to the config that produced them.

A stage ``<root>/round_<k>/<name>/`` exists only when finished: its files are written into a hidden temporary
directory next to it, together with ``stage.json`` (the stage's fingerprint and summary) and the ``DONE`` marker,
and the directory is renamed into place in one step. Work in progress that should survive a kill (shards,
trainer checkpoints) lives in ``<name>.partial/`` and is removed once the stage is committed (or, when a kill
came in between, by :meth:`Stage.discard_stale_partial` on the next run).

A finished stage is reused only when its recorded fingerprint equals the one the current config produces; a
different one raises :class:`StageConfigChanged` unless the caller chooses to redo the stage.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rlhf_pairs.utils.faults import kill_point
from rlhf_pairs.utils.hashing import CONTENT_KEYS, changed_inputs, comparable, sha256_json

DONE = "DONE"
RECORD = "stage.json"


class StageConfigChanged(ValueError):
    """A finished stage was produced with another configuration than the current one."""


def fingerprint_digest(fingerprint: dict) -> str:
    """A short, stable digest of a fingerprint (to chain a stage's fingerprint into the next one's). The content
    digests of local models and templates (:data:`~rlhf_pairs.utils.hashing.CONTENT_KEYS`) are not chained: each
    stage that reads one checks it, the first such stage refuses a change, and ``--redo`` recomputes it and every
    later stage; runs recorded before those digests existed keep their chain."""
    return sha256_json({k: v for k, v in fingerprint.items() if k not in CONTENT_KEYS})[:16]


class Stage:
    """One stage directory. ``path`` is the finished stage, ``partial`` its resumable work in progress."""

    def __init__(self, root: str | Path, round_index: int, name: str, fingerprint: dict, inputs: dict | None = None):
        self.round_index = round_index
        self.name = name
        self.fingerprint = fingerprint
        self.inputs = inputs or {}  # fingerprint key of a content digest -> the data it was read from, for messages
        self.path = Path(root) / f"round_{round_index}" / name
        self.partial = self.path.with_name(f"{name}.partial")

    @property
    def label(self) -> str:
        return f"round_{self.round_index}/{self.name}"

    @property
    def digest(self) -> str:
        return fingerprint_digest(self.fingerprint)

    def is_done(self) -> bool:
        return (self.path / DONE).exists()

    def record(self) -> dict:
        """The finished stage's ``stage.json``: ``{"fingerprint": ..., "summary": ...}``."""
        return json.loads((self.path / RECORD).read_text())

    def check(self) -> bool:
        """True when the stage is finished with the current fingerprint, False when it is not finished.

        Raises :class:`StageConfigChanged` naming the stage and the differing keys when it is finished with
        another fingerprint.
        """
        if not self.is_done():
            return False
        from rlhf_pairs.rank_dataset import changed_keys

        recorded, current = comparable(self.record()["fingerprint"], self._plain_fingerprint())
        if recorded == current:
            return True
        changed = changed_inputs(recorded, current, self.inputs)
        if changed:
            raise StageConfigChanged(
                f"{self.label} was made from other data: {'; '.join(changed)} changed since it ran (changed: "
                f"{changed_keys(recorded, current)}); restore that data to resume, or pass --redo to recompute this "
                "stage and every later one from the data as it is now"
            )
        raise StageConfigChanged(
            f"{self.label} was finished with a different configuration (changed: {changed_keys(recorded, current)}); "
            "re-run with the original settings to resume, or pass --redo to recompute it and every later stage"
        )

    def _plain_fingerprint(self) -> dict:
        """The fingerprint as its JSON record reads back."""
        return json.loads(json.dumps(self.fingerprint, default=str))

    def _matches(self, recorded: dict) -> bool:
        recorded, current = comparable(recorded, self._plain_fingerprint())
        return recorded == current

    def begin_partial(self) -> Path:
        """The stage's partial directory, emptied first if it holds work made with another fingerprint."""
        marker = self.partial / "fingerprint.json"
        if self.partial.exists() and (not marker.exists() or not self._matches(json.loads(marker.read_text()))):
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            marker.write_text(json.dumps(self.fingerprint, indent=1, default=str))
        return self.partial

    def staging_dir(self) -> Path:
        """An empty hidden directory next to the stage to write its files into before :meth:`commit`."""
        for leftover in self.path.parent.glob(f".{self.name}.tmp-*"):  # from a run killed while committing
            shutil.rmtree(leftover)
        tmp = self.path.with_name(f".{self.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, staging: Path, summary: dict) -> None:
        """Write the record and the marker into ``staging`` and rename it into place; drop the partial work."""
        (staging / RECORD).write_text(
            json.dumps({"fingerprint": self.fingerprint, "summary": summary}, indent=1, default=str)
        )
        (staging / DONE).write_text("")
        if self.path.exists():  # an unfinished leftover (no DONE): a finished stage is never overwritten here
            shutil.rmtree(self.path)
        os.replace(staging, self.path)
        kill_point("committed")
        if self.partial.exists():
            shutil.rmtree(self.partial)

    def discard_stale_partial(self) -> bool:
        """Remove the partial work of a finished stage, left behind by a kill between :meth:`commit`'s rename and
        its clean-up; returns whether there was any. Call it from one process only."""
        if not (self.is_done() and self.partial.exists()):
            return False
        shutil.rmtree(self.partial)
        return True

    def remove(self) -> None:
        for path in (self.path, self.partial):
            if path.exists():
                shutil.rmtree(path)
