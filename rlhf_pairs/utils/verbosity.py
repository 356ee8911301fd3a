"""What a job prints on the console, set by one variable, ``RLHF_PAIRS_VERBOSITY`` (``info`` when unset):

- ``info``: our log lines (one per stage or step of a job, its summary) and progress bars, the trainer's step bar;
  the trainer's per-step log dicts are not printed (they stay in ``log_history`` and go to the ``report_to``
  trackers: :mod:`rlhf_pairs.trainer.console`); transformers and datasets log warnings only and show no progress
  bars of their own (weight loading, shard writing, dataset maps); the library noise in :data:`KNOWN_WARNINGS` and
  :data:`KNOWN_LOG_RECORDS` is filtered.
- ``warning``: warnings and errors and the job's printed report; no stage lines, no progress bars.
- ``debug``: our debug lines, transformers' and datasets' info logs and progress bars, the trainer's dicts as
  transformers prints them, and no filter.

A library's own variable (``TRANSFORMERS_VERBOSITY``, ``DATASETS_VERBOSITY``, ``HF_HUB_DISABLE_PROGRESS_BARS``,
``HF_DATASETS_DISABLE_PROGRESS_BARS``) wins over ours for that library. Only the standard library is imported at
module level; :func:`setup_console` imports transformers and datasets.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSITY_ENV = "RLHF_PAIRS_VERBOSITY"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
PACKAGE_LOGGER = "rlhf_pairs"

# Library warnings we know to be noise: (category, message regex, module regex), each with the library, the version
# it was seen with and why. Filtered at every level but debug, process-wide: each matches one library's message from
# one of its modules, so nothing else is hidden.
KNOWN_WARNINGS = [
    # transformers 5.25 deprecates these model methods (renamed *activation_checkpointing*, aliases until v6). TRL 1.16
    # calls them on every DPO step (trl.models.utils.disable_gradient_checkpointing, around the reference log-probs)
    # and when it unwraps a model for generation; peft 0.21 reads `is_gradient_checkpointing`. Our code calls none.
    (
        FutureWarning,
        r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is deprecated",
        r"transformers\.modeling_utils",
    ),
]
# Library log records we know to be noise: (logger name, start of the message).
KNOWN_LOG_RECORDS = [
    # DeepSpeed 0.19.8 says this (on stdout) when it is imported on a machine without a GPU; accelerate imports it
    # while any trainer is built, also in runs that do not use DeepSpeed. Our jobs choose the CPU themselves.
    ("DeepSpeed", "Setting accelerator to CPU"),
    # transformers 5.25 advises (once per process) on `resize_token_embeddings`'s default, mean_resizing, which
    # train-pm's added pad token relies on; pair_pm_trainer.ensure_pad_token logs what it did instead.
    ("transformers.modeling_utils", "The new embeddings will be initialized from a multivariate normal distribution"),
    ("transformers.modeling_utils", "The new lm_head weights will be initialized from a multivariate normal"),
]


def console_verbosity() -> str:
    """``$RLHF_PAIRS_VERBOSITY`` (``debug``, ``info`` or ``warning``; ``info`` when unset).

    Raises ``ValueError`` naming the variable for another value."""
    raw = os.environ.get(VERBOSITY_ENV, "").strip().lower()
    if not raw:
        return "info"
    if raw not in LEVELS:
        raise ValueError(f"{VERBOSITY_ENV}={raw!r}: expected one of {', '.join(LEVELS)}")
    return raw


def show_progress_bars() -> bool:
    """Whether our progress bars show: at every verbosity but ``warning`` (an unknown value shows them; the job's
    start reports it)."""
    return os.environ.get(VERBOSITY_ENV, "").strip().lower() != "warning"


def apply_package_level() -> None:
    """Set the level of our loggers (``rlhf_pairs.*``) from ``$RLHF_PAIRS_VERBOSITY`` when it is set (otherwise they
    keep what the application configured). Cheap; every module logger calls it when it is created, so the variable
    applies however a job was started."""
    raw = os.environ.get(VERBOSITY_ENV, "").strip().lower()
    if raw in LEVELS:
        logging.getLogger(PACKAGE_LOGGER).setLevel(LEVELS[raw])


class _DropRecords(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: list[str]):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def filter_known_noise(verbosity: str | None = None) -> None:
    """Install the filters of :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_RECORDS` (not at ``debug``). Idempotent;
    process-wide, since a warning raised inside a trainer's step cannot be scoped more narrowly than its message."""
    if (verbosity or console_verbosity()) == "debug":
        return
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)  # replaces a duplicate
    by_logger: dict[str, list[str]] = {}
    for name, prefix in KNOWN_LOG_RECORDS:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) for f in target.filters):
            target.addFilter(_DropRecords(prefixes))


def setup_console(verbosity: str | None = None) -> str:
    """Apply ``verbosity`` (default ``$RLHF_PAIRS_VERBOSITY``) to this process: our loggers' level, transformers' and
    datasets' log levels and progress bars, and the known-noise filters; returns the level's name. Call it once at
    the start of a job (it imports transformers and datasets)."""
    level = verbosity or console_verbosity()
    if level not in LEVELS:
        raise ValueError(f"verbosity {level!r}: expected one of {', '.join(LEVELS)}")
    logging.getLogger(PACKAGE_LOGGER).setLevel(LEVELS[level])
    import datasets
    from transformers.utils import logging as hf_logging

    debug = level == "debug"
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        hf_logging.set_verbosity(logging.INFO if debug else logging.WARNING)
    if "DATASETS_VERBOSITY" not in os.environ:
        datasets.logging.set_verbosity(logging.INFO if debug else logging.WARNING)
    if "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
        (hf_logging.enable_progress_bar if debug else hf_logging.disable_progress_bar)()
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
        (datasets.enable_progress_bars if debug else datasets.disable_progress_bars)()
    filter_known_noise(level)
    return level
