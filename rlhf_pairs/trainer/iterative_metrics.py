"""The iterative loop's per-round metrics: one row per round from the finished stages' records, written to
``metrics.jsonl`` and ``metrics.png`` and sent to the training config's ``report_to`` trackers.

A row is ``{"round": k, "<stage>/<key>": value, ...}`` with every finished stage's summary (``stage.json``), so the
files are rebuilt from disk after every stage and never hold duplicates, with or without a resume.

Trackers are accelerate's (``accelerate.tracking``: tensorboard, wandb, trackio, mlflow, comet_ml, aim, clearml,
dvclive, swanlab), created on the main process as ``Accelerator.init_trackers`` would, without an ``Accelerator``:
the Trainer builds its own, and ``Accelerator.end_training`` would destroy the process group the loop still needs.
A round is logged once all its stages are finished, with the round as the step and only its numeric values; a
resumed run logs the rounds finished earlier first, so every tracker run holds the whole history.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlhf_pairs.trainer.stages import Stage
from rlhf_pairs.utils.io import write_jsonl_atomic
from rlhf_pairs.utils.plotting import plot_rounds

logger = logging.getLogger(__name__)  # only called on the main process


def collect_metrics(stages: list[Stage], rounds: int) -> list[dict]:
    """One row per round with every finished stage's summary (prefixed by the stage name); rounds without a
    finished stage are left out."""
    rows = []
    for k in range(1, rounds + 1):
        row = {"round": k}
        for stage in stages:
            if stage.round_index == k and stage.is_done():
                row.update({f"{stage.name}/{key}": v for key, v in stage.record()["summary"].items()})
        if len(row) > 1:
            rows.append(row)
    return rows


def write_metrics(root: Path, metrics: list[dict]) -> None:
    """``<root>/metrics.jsonl`` (one row per round) and, when there is a row, ``<root>/metrics.png``
    (:func:`~rlhf_pairs.utils.plotting.plot_rounds`)."""
    write_jsonl_atomic(root / "metrics.jsonl", metrics)
    if metrics:
        plot_rounds(root, metrics, root / "metrics.png")


def numeric_values(row: dict) -> dict[str, float | int]:
    """The values of a metrics row that a tracker can plot: ints and floats, not bools, ``None``, strings (paths)
    or the ``round`` (the step)."""
    return {
        key: value
        for key, value in row.items()
        if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def mean_logged_loss(history: list[dict]) -> float | None:
    """Mean training loss per step from a Trainer's ``log_history``: each logged ``loss`` (the mean since the
    previous log) weighted by the steps it covers; ``None`` when no loss was logged.

    Unlike the Trainer's ``train_loss`` (the mean over the steps since the last resume) it covers the whole
    training, since the log history is restored from the checkpoint; steps after the last log are not counted
    (none with ``logging_steps: 1``)."""
    total, steps, previous = 0.0, 0, 0
    for entry in history:
        if "loss" in entry and entry["step"] > previous:
            total += entry["loss"] * (entry["step"] - previous)
            steps += entry["step"] - previous
            previous = entry["step"]
    return total / steps if steps else None


def start_trackers(report_to: list[str] | str | None, project_name: str, logging_dir: Path, config: dict) -> list:
    """accelerate trackers for the names in ``report_to`` (a ``TrainingArguments.report_to``), started, with
    ``config``'s scalar values stored as the run's configuration; ``[]`` for ``none`` or an empty list.

    Call it on the main process only. Names accelerate has no tracker for (``azure_ml``, ``codecarbon``, ...) are
    skipped with a warning, and so are trackers whose package is not installed (accelerate's ``filter_trackers``).
    ``project_name`` is the tracker's project (wandb, trackio) or, for tensorboard, the sub-directory of
    ``logging_dir``."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, filter_trackers

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [name for name in names if name != "none"]
    unknown = [name for name in names if name != "all" and name not in LOGGER_TYPE_TO_CLASS]
    if unknown:
        logger.warning("round metrics are not sent to %s: accelerate has no tracker for it", ", ".join(unknown))
    names = [name for name in names if name not in unknown]
    trackers = []
    for name in filter_trackers(names, logging_dir):
        tracker_class = LOGGER_TYPE_TO_CLASS[str(name)]
        if tracker_class.requires_logging_directory:
            trackers.append(tracker_class(project_name, logging_dir))
        else:
            trackers.append(tracker_class(project_name))
    scalars = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
    for tracker in trackers:
        tracker.start()
        tracker.store_init_configuration(scalars)
    return trackers


class RoundLogger:
    """Sends each finished round's numeric metrics to trackers once, with the round as the step."""

    def __init__(self, trackers: list):
        self.trackers = trackers
        self.logged: set[int] = set()

    def log(self, metrics: list[dict], finished_rounds: set[int]) -> None:
        """Log the rows of ``metrics`` whose round is in ``finished_rounds`` and was not logged yet."""
        for row in metrics:
            k = row["round"]
            if k in finished_rounds and k not in self.logged:
                for tracker in self.trackers:
                    tracker.log(numeric_values(row), step=k)
                self.logged.add(k)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
