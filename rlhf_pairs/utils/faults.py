"""Stopping a long job: SIGINT/SIGTERM that cannot be lost, and deterministic kill points for resume tests.

**Stop signals.** Inside :func:`stop_on_signals`, SIGINT and SIGTERM record the signal and raise at once
(``KeyboardInterrupt``, or ``SystemExit(128 + signum)`` for SIGTERM). Python ignores an exception raised while a
finaliser (``__del__``, a weakref callback) runs, so an interrupt arriving there would be lost and the run would go
on; the recorded signal is therefore raised again at the next kill point (every shard, every training step, every
stage commit). Finished work is committed atomically, so a stopped run resumes like a killed one.

**Kill points.** Set ``RLHF_PAIRS_KILL_AT="<scope>:<point>[#n]"`` and the process kills itself with SIGKILL the n-th
time (default: the first) it reaches that point inside that scope, e.g. ``round_2/rank:shard#1`` (after the first
ranking shard of round 2 is written) or ``round_2/train:step#2``. ``RLHF_PAIRS_INTERRUPT_AT`` (same syntax) instead
delivers a SIGINT there that a finaliser swallows, to test that the run still stops at its next kill point, and
``RLHF_PAIRS_FAIL_AT`` raises a ``RuntimeError`` there (a job failing on its own). ``RLHF_PAIRS_KILL_RANK=<r>``
limits all three to the process of global rank ``r`` of a launch (its ``$RANK``; a lone process is rank 0), to test
that a failure on one process ends the run on all of them; unset, every process stops there. Unset,
:func:`kill_point` costs three dictionary lookups.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter

ENV = "RLHF_PAIRS_KILL_AT"
INTERRUPT_ENV = "RLHF_PAIRS_INTERRUPT_AT"
FAIL_ENV = "RLHF_PAIRS_FAIL_AT"
RANK_ENV = "RLHF_PAIRS_KILL_RANK"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_scope = ""
_reached: Counter = Counter()
_stop_signal: int | None = None
_depth = 0  # how many stop_on_signals blocks are open (they nest: iterate and best-of-n call rank_dataset)


class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the run stops, its finished work stays resumable."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}; re-run the same command to resume")
        self.signum = signum


def _raise_stop(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise SystemExit(128 + signum)
    raise StopRequested(signum)


def _on_signal(signum, frame) -> None:
    global _stop_signal
    _stop_signal = signum
    _raise_stop(signum)


def check_stop() -> None:
    """Raise again a stop signal that arrived earlier (and may have been swallowed by a finaliser)."""
    if _stop_signal is not None:
        _raise_stop(_stop_signal)


@contextlib.contextmanager
def stop_on_signals():
    """Inside the block, SIGINT and SIGTERM stop the run for sure (see the module docstring). Only the main thread
    can install signal handlers; elsewhere the block changes nothing.

    Blocks nest (iterate and best-of-n call :func:`rlhf_pairs.rank_dataset.rank_dataset`, which opens its own): a
    signal recorded inside an inner block stays pending after it closes, for the enclosing run's next kill point;
    only the outermost block starts and ends with none pending."""
    global _stop_signal, _depth
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    outermost = _depth == 0
    if outermost:
        _stop_signal = None
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if outermost:  # a nested block (iterate -> rank) leaves a pending signal for the enclosing run to raise
            _stop_signal = None


@contextlib.contextmanager
def scope(name: str):
    """Name the kill points reached inside the ``with`` block ``<name>:<point>``."""
    global _scope
    previous, _scope = _scope, name
    try:
        yield
    finally:
        _scope = previous


def _reached_spec(env: str, point: str) -> bool:
    spec = os.environ.get(env)
    if not spec:
        return False
    target, _, nth = spec.partition("#")
    name = f"{_scope}:{point}"
    if name != target:
        return False
    only_rank = os.environ.get(RANK_ENV, "").strip()
    if only_rank and int(only_rank) != int(os.environ.get("RANK", "0")):
        return False
    _reached[env, name] += 1
    return _reached[env, name] == int(nth or 1)


def kill_point(point: str) -> None:
    """A point where stopping is safe: a pending stop signal is raised here (:func:`check_stop`); in tests, the
    process is killed (``RLHF_PAIRS_KILL_AT``), fails (``RLHF_PAIRS_FAIL_AT``) or is sent a swallowed interrupt
    (``RLHF_PAIRS_INTERRUPT_AT``)."""
    check_stop()
    if _reached_spec(ENV, point):
        os.kill(os.getpid(), signal.SIGKILL)
    if _reached_spec(FAIL_ENV, point):
        raise RuntimeError(f"{FAIL_ENV}: failing at {_scope}:{point} on rank {os.environ.get('RANK', '0')}")
    if _reached_spec(INTERRUPT_ENV, point):
        try:  # what a SIGINT arriving inside a finaliser amounts to: the handler ran, its exception is lost
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
