"""The process group every job joins: accelerate's ``PartialState``, on CPU when there is no GPU.

``PartialState()`` with no argument treats a machine without a GPU as a single process even when it was started
as one of several (``torchrun`` / ``accelerate launch --multi_gpu --num_processes K``), so every process would do
all the work. Asking for the CPU there makes accelerate form a gloo process group instead. Note that
``accelerate launch --cpu`` itself starts only one process unless MPI is set up (``--mpirun_hostfile``); for K
CPU processes on one machine use ``recipes/accelerate/cpu_2proc.yaml`` (torchrun-based) or ``--multi_gpu``.

Processes wait at barriers for a long time (rank 0 generating with vLLM, uneven last shards), so the process
group's timeout is ``RLHF_PAIRS_DIST_TIMEOUT_S`` seconds (default 3 hours) instead of NCCL's 10 minutes.

Models loaded for plain inference (judges, the generation policy) are loaded under :func:`zero3_init_disabled`:
under ZeRO-3 with ``zero3_init_flag: true``, parsing ``TrainingArguments`` makes every later ``from_pretrained``
partition its weights, which only a DeepSpeed engine would gather. Code that reads a trained model's whole weights
on one process (merging a LoRA adapter) gathers them first on every process with :func:`gathered_parameters`.
Both run under real DeepSpeed in ``tests/test_deepspeed.py`` (2 CPU processes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from datetime import timedelta
from typing import NoReturn

TIMEOUT_ENV = "RLHF_PAIRS_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3 * 60 * 60


def process_timeout() -> timedelta:
    """The process group timeout: ``$RLHF_PAIRS_DIST_TIMEOUT_S`` seconds, default 3 hours.

    Raises ``ValueError`` when the variable is set to something other than a positive number."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return timedelta(seconds=seconds)


def process_state(timeout: timedelta | None = None):
    """The shared ``accelerate.PartialState`` (created on first call; later calls return the same state).

    The process group's timeout is ``timeout`` (default :func:`process_timeout`), also when the group was created
    earlier by someone else: parsing a ``TrainingArguments`` creates it with ``ddp_timeout`` (30 minutes by
    default), so a job that parses one should pass the larger of the two.
    """
    import torch
    from accelerate import PartialState

    timeout = timeout or process_timeout()
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu, timeout=timeout)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from torch.distributed import distributed_c10d

        if hasattr(distributed_c10d, "_set_pg_timeout"):  # private, but the only way to change an existing group's
            distributed_c10d._set_pg_timeout(timeout)
    return state


def launched_worker() -> bool:
    """Whether this process is one of a distributed launch's workers (``accelerate launch``/``torchrun``, which set
    ``LOCAL_RANK`` and ``WORLD_SIZE``), not a process of its own."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def exit_worker(status: int) -> NoReturn:
    """End a launched worker with ``status`` the way ``sys.exit`` would (non-daemon threads joined, ``atexit``
    handlers run, the standard streams flushed), then skip the interpreter's teardown with ``os._exit``.

    Why: after the last collective, gloo's worker thread (torch 2.13) still drops that work, and the tensors it held
    need the GIL to be freed; when the main thread is already finalizing the interpreter, that thread is made to exit
    inside a destructor and the process aborts (SIGABRT, "terminate called without an active exception"). The
    launcher then fails a run whose job had finished and written everything: 3 of 33 two-process CPU runs of
    ``grpo`` under ZeRO-3 here (0 of 48 since), and an ``online-dpo`` run in CI (core dumps: ``~AsyncBarrierWork`` ->
    ``~AsyncAllgatherWork`` -> ``take_gil`` -> ``pthread_exit``). Destroying the process group first does not help
    (the trainers' jobs do, in ``trainer.end()``); an atexit fix proposed upstream (pytorch/pytorch#179291) was
    abandoned. Without the teardown there is nothing to race."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what Py_Finalize runs first: join the non-daemon threads
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to write to
            pass
    try:  # C's stdio buffers too (what a native library printed), as exit() would
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass
    os._exit(status)


@contextlib.contextmanager
def zero3_init_disabled():
    """Inside the block, ``from_pretrained`` loads whole (unpartitioned) weights even when a ZeRO-3 config with
    ``zero3_init_flag`` is active, and ``generate`` does not sync with other processes (``synced_gpus``).

    Use it for models that are never wrapped by DeepSpeed (judges, the HF generation policy), and for a model that
    one process loads while the others wait: a ZeRO-3 ``from_pretrained`` is a collective, which would hang there.
    It clears transformers' global DeepSpeed config reference and restores it on exit.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


@contextlib.contextmanager
def gathered_parameters(model):
    """Inside the block every process holds ``model``'s whole parameters, also those that DeepSpeed ZeRO-3
    partitioned (elsewhere: no change). Under ZeRO-3 this is a collective: call it on every process, even when only
    one of them reads the weights. Changes made inside are not written back to the partitions.
    """
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]  # the parameters DeepSpeed partitioned
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


class MainProcessLogger(logging.LoggerAdapter):
    """What ``accelerate.logging.get_logger`` gives (a record is logged on the main process only, unless the call
    passes ``main_process_only=False``), also before any process state exists (a library function called outside a
    job), when accelerate's raises: then every process logs, as a plain logger does. accelerate is imported only when
    a record is logged, so a module can create its logger at import time and stay light (instant ``--help``)."""

    def log(self, level, msg, *args, main_process_only: bool = True, **kwargs):
        if main_process_only:
            from accelerate.state import PartialState

            if PartialState._shared_state and not PartialState().is_main_process:
                return
        super().log(level, msg, *args, **kwargs)


def get_logger(name: str) -> MainProcessLogger:
    """The module logger of a job's code: :class:`MainProcessLogger` over ``logging.getLogger(name)``. Our loggers'
    level follows ``RLHF_PAIRS_VERBOSITY`` when it is set (:mod:`rlhf_pairs.utils.verbosity`)."""
    from rlhf_pairs.utils.verbosity import apply_package_level

    apply_package_level()
    return MainProcessLogger(logging.getLogger(name), {})


def summed_judge_usage(judge, state) -> dict:
    """The ``usage`` counters of an API judge (requests, tokens, verdict kinds) summed over the processes of the
    launch; ``{}`` for a judge without them. Every process must call it."""
    usage = dict(getattr(judge, "usage", None) or {})
    if state.num_processes > 1:
        from collections import Counter

        from accelerate.utils import gather_object

        total = Counter()
        for part in gather_object([usage]):
            total.update(part)
        usage = dict(total)
    return usage
