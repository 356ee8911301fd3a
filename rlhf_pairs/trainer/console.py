"""What a trainer prints, under ``RLHF_PAIRS_VERBOSITY`` (:mod:`rlhf_pairs.utils.verbosity`).

transformers prints every log record (``{'loss': ..., 'grad_norm': ...}`` each ``logging_steps``, the final
``{'train_runtime': ...}``) through its ``ProgressCallback`` (written above the step bar) or, with ``disable_tqdm``,
its ``PrinterCallback``. :func:`quiet_trainer_console` keeps the bar and prints one line per evaluation and one at
the end of training instead. The records are untouched: they still reach ``state.log_history``
(``trainer_state.json``, the iterate job's ``log_history.json``) and the ``report_to`` trackers, which are other
callbacks.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from rlhf_pairs.utils.distributed import get_logger
from rlhf_pairs.utils.verbosity import console_verbosity, filter_known_noise

logger = get_logger(__name__)  # main process only (rlhf_pairs.utils.distributed)

# Record keys that say how fast a run went or where it is, not how well it trains.
_NOT_METRICS = ("epoch", "total_flos")
_SPEED_SUFFIXES = ("_runtime", "_per_second")


def format_metrics(record: dict) -> str:
    """``name value, ...`` for the numeric metrics of a log record (speed, epoch and flos left out)."""
    return ", ".join(
        f"{key} {value:.4g}"
        for key, value in record.items()
        if isinstance(value, (int, float)) and key not in _NOT_METRICS and not key.endswith(_SPEED_SUFFIXES)
    )


class StepProgressCallback(ProgressCallback):
    """transformers' progress bars (training steps, evaluation batches), the step bar named ``label``, without the
    log records it writes above them."""

    def __init__(self, label: str = "training"):
        super().__init__()
        self.label = label

    def on_train_begin(self, args, state, control, **kwargs):  # ProgressCallback's, with the bar's name
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc=self.label)
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class TrainingSummaryCallback(TrainerCallback):
    """One line per evaluation record (its ``eval_*`` metrics: held-out loss, pairwise accuracy, win rate) and one at
    the end of training (steps, time, the first and last logged loss), logged at INFO on the main process, each
    starting with ``label`` and written above any progress bar."""

    def __init__(self, label: str = "training"):
        self.label = label
        self._final: dict | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_runtime" in logs:  # the Trainer's last record of a train() call: said once its bar is closed
            self._final = dict(logs)
        elif any(key.startswith("eval_") for key in logs):
            _log_above_bars(f"{self.label}: evaluation at step {state.global_step}: {format_metrics(logs)}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._final is None:
            return
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        line = f"{self.label}: {state.global_step} steps in {self._final['train_runtime']:.1f} s"
        if losses:
            line += f", loss {losses[0]:.4g} (first logged step) -> {losses[-1]:.4g} (last)"
        _log_above_bars(line)
        self._final = None


def _log_above_bars(line: str) -> None:
    """``logger.info(line)`` with the progress bars on stderr cleared first and drawn again after it."""
    with tqdm.external_write_mode(file=sys.stderr):
        logger.info(line)


def quiet_trainer_console(trainer, label: str = "training") -> None:
    """Make ``trainer`` print what ``RLHF_PAIRS_VERBOSITY`` asks for: at ``info`` its step bar (unless
    ``disable_tqdm``) and :class:`TrainingSummaryCallback`'s lines instead of its log records; at ``warning`` neither;
    at ``debug`` what transformers prints. Call it once the trainer is built (a notebook's progress table is left
    as it is). Also installs the known-noise filters, which a caller should install before building the trainer
    (:func:`~rlhf_pairs.utils.verbosity.filter_known_noise`: accelerate imports DeepSpeed there)."""
    level = console_verbosity()
    filter_known_noise(level)
    if level == "debug":
        return
    callbacks = trainer.callback_handler.callbacks
    kept = []
    for callback in callbacks:
        if type(callback) is ProgressCallback:  # disable_tqdm is off
            if level == "info":
                kept.append(StepProgressCallback(label))
        elif type(callback) is not PrinterCallback:
            kept.append(callback)
    if level == "info" and not any(isinstance(c, TrainingSummaryCallback) for c in kept):
        kept.append(TrainingSummaryCallback(label))
    callbacks[:] = kept
