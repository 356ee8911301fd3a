"""Trainer checkpoints that a killed run left behind: which one to resume from, which ones to throw away.

The Trainer writes ``trainer_state.json`` last when it saves ``checkpoint-<step>``, so a checkpoint without it was
killed while being saved. Resuming from such a checkpoint fails on every re-run, and
``transformers.trainer_utils.get_last_checkpoint`` picks it anyway when it is the newest; these helpers skip it.
Checkpoints are found and ordered by transformers' own ``sort_checkpoints`` (the one its checkpoint rotation uses).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

# Plain logging: these helpers are also called outside a job, before any accelerate state exists.
logger = logging.getLogger(__name__)

COMPLETE_MARKER = "trainer_state.json"


def _checkpoints(directory: str | Path) -> list[Path]:
    """``checkpoint-<step>`` directories in ``directory``, newest (highest step) first; none if it is missing."""
    from transformers.trainer_utils import sort_checkpoints

    if not Path(directory).is_dir():
        return []
    return [Path(p) for p in reversed(sort_checkpoints(str(directory)))]  # sort_checkpoints: oldest first


def last_complete_checkpoint(directory: str | Path) -> str | None:
    """The newest ``checkpoint-<step>`` in ``directory`` holding ``trainer_state.json``, or ``None``."""
    return next((str(p) for p in _checkpoints(directory) if (p / COMPLETE_MARKER).is_file()), None)


def remove_incomplete_checkpoints(directory: str | Path) -> None:
    """Delete the ``checkpoint-<step>`` directories without ``trainer_state.json`` (killed while being saved).

    Call it from one process only, before the Trainer looks for checkpoints."""
    for path in _checkpoints(directory):
        if not (path / COMPLETE_MARKER).is_file():
            logger.warning("removing incomplete checkpoint %s (no %s)", path, COMPLETE_MARKER)
            shutil.rmtree(path)
