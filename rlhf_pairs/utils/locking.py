"""One run per output: an exclusive lock that names its holder and dies with it.

The lock is an OS file lock (``fcntl.flock``) on ``<output>.lock``, held by the main process for the whole run: the
kernel releases it when the holder exits, killed or not, so a lock left by a dead process is taken over by the
next run without any clean-up, and two live runs can never both hold it. The file records the holder's pid, host
and start time, so the refusal says who holds it. Assumes one machine or a shared file system with working
``flock`` (local disks, NFSv4, Lustre); without ``fcntl`` (Windows) no lock is taken, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path


class OutputLocked(RuntimeError):
    """Another live run holds the output's lock."""


@contextlib.contextmanager
def output_lock(output: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of ``output`` (a file or directory) inside the block; yields the lock file's path.

    Raises :class:`OutputLocked` naming the holder's pid, host and start time when another run holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        warnings.warn(f"no file locking on this platform: nothing stops a second run on {output}", stacklevel=3)
        yield Path(f"{output}.lock")
        return
    path = Path(f"{Path(output).resolve()}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            raise OutputLocked(
                f"{output} is in use by another run (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
                f"started {holder.get('started', '?')}): wait for it to finish or stop it, or choose another output"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}))
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock; the file stays (removing it would race with a waiting run)


@contextlib.contextmanager
def main_process_lock(output: str | Path, state, create_dir: bool = False) -> Iterator[None]:
    """:func:`output_lock` taken by the main process of ``state`` (an accelerate ``PartialState``), which then creates
    ``output`` as a directory when ``create_dir``; every process learns whether that worked, so a refusal (or an
    output location that cannot be written) stops all of them at once instead of leaving the others waiting at a
    barrier."""
    from accelerate.utils import broadcast_object_list

    with contextlib.ExitStack() as stack:
        error = [None]
        if state.is_main_process:
            try:
                stack.enter_context(output_lock(output))
                if create_dir:
                    Path(output).mkdir(parents=True, exist_ok=True)
            except OutputLocked as err:
                error = [("locked", str(err))]
            except OSError as err:
                error = [("os", f"cannot write next to {output}: {err}")]
        if state.num_processes > 1:
            broadcast_object_list(error, from_process=0)
        if error[0] is not None:
            kind, message = error[0]
            raise OutputLocked(message) if kind == "locked" else PermissionError(message)
        yield
