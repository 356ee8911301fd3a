"""Deterministic kill points, so resume can be tested against real kills (SIGKILL, no clean-up runs).

Set ``RLHF_PAIRS_KILL_AT="<scope>:<point>[#n]"`` and the process kills itself with SIGKILL the n-th time (default:
the first) it reaches that point inside that scope, e.g. ``round_2/rank:shard#1`` (after the first ranking shard
of round 2 is written) or ``round_2/train:step#2``. Unset, :func:`kill_point` costs one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter

ENV = "RLHF_PAIRS_KILL_AT"
_scope = ""
_reached: Counter = Counter()


@contextlib.contextmanager
def scope(name: str):
    """Name the kill points reached inside the ``with`` block ``<name>:<point>``."""
    global _scope
    previous, _scope = _scope, name
    try:
        yield
    finally:
        _scope = previous


def kill_point(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("#")
    name = f"{_scope}:{point}"
    if name != target:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
