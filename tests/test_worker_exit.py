"""How a job's process ends: a launched worker whose job succeeded ends without the interpreter's teardown (where
gloo's worker thread can abort a finished run, SIGABRT after the last step) yet exits as ``sys.exit`` would:
``atexit`` handlers run, threads joined, buffered output written; a failed one exits as usual."""

import os
import socket
import subprocess
import sys
import textwrap

# A job for the jobs' runner: no options; main makes the process group as every job does, gathers a tensor from
# every rank, and prints (buffered) what it saw. The first argument says whether it ends with a user error.
JOB = textwrap.dedent(
    """
    import argparse, atexit, os, sys, types
    from pathlib import Path
    import torch, torch.distributed as dist
    from rlhf_pairs.scripts import command_main
    from rlhf_pairs.utils.distributed import process_state

    def make_parser(prog):
        parser = argparse.ArgumentParser(prog=prog)
        parser.add_argument("outcome")
        parser.add_argument("out")
        return parser

    outcome, out = sys.argv[1], Path(sys.argv[2])
    job = types.ModuleType("rlhf_pairs.scripts.job")
    job.RECIPES = "job"
    job.make_parser = make_parser

    def main(args):
        process_state()
        gathered = [torch.zeros(1) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, torch.tensor([float(dist.get_rank())]))
        dist.barrier()
        if outcome == "user-error":
            raise ValueError("bad input")
        if outcome == "bug":
            raise KeyError("a bug")
        print("gathered", [int(t) for t in gathered])

    job.main = main
    rank = os.environ["RANK"]
    atexit.register(lambda: (out / f"atexit-{rank}").write_text("ran"))
    command_main(job)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launched_workers_exit_with_their_status_after_their_atexit_handlers(tmp_path):
    """Two workers under torchrun (as ``accelerate launch`` starts them, ``python -u``), each a job script's
    ``__main__`` with a real gloo group: a job that returned exits 0 with its output and every ``atexit`` handler
    run; a user error exits 1 with its one line, a bug exits 1 with its traceback, and the launch fails."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RLHF_PAIRS_DEBUG", "PYTHONUNBUFFERED"):  # the sandbox's environment sets the latter
        env.pop(name, None)
    for outcome in ("succeed", "user-error", "bug"):
        out = tmp_path / outcome
        out.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(script), outcome, str(out)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert sorted(p.name for p in out.glob("atexit-*")) == ["atexit-0", "atexit-1"], proc.stderr[-3000:]
        if outcome == "succeed":
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert proc.stdout.count("gathered") == proc.stdout.count("[0, 1]") == 2  # the two may interleave
            continue
        assert proc.returncode != 0
        if outcome == "user-error":
            assert proc.stderr.count("rlhf-pairs job: error: bad input") == 2
        else:
            assert proc.stderr.count("KeyError: 'a bug'") == 2 and "Traceback (most recent call last)" in proc.stderr


# exit_process in one process that looks launched (LOCAL_RANK, WORLD_SIZE), stdout a pipe without -u: buffered.
EXIT = textwrap.dedent(
    """
    import atexit, os, sys, threading, time
    from rlhf_pairs.scripts import exit_process

    class Global:
        def __del__(self, write=os.write):
            write(2, b"torn down\\n")  # only when the interpreter finalizes this module

    kept = Global()
    atexit.register(lambda: print("atexit ran", file=sys.stderr))
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread joined", file=sys.stderr))).start()
    print("buffered", end="")

    def command():
        if sys.argv[1] == "bug":
            raise KeyError("a bug")
        return int(sys.argv[1])

    exit_process(command)
    """
)


def test_a_launched_process_that_succeeded_exits_as_sys_exit_would_without_the_teardown(tmp_path):
    """Status 0: buffered output written, a late non-daemon thread joined, atexit handlers run, and the interpreter's
    teardown (where gloo's threads abort) skipped. A failure exits as usual, teardown included: its status, or 1 and
    the traceback; so does a process that was not launched."""
    script = tmp_path / "exit.py"
    script.write_text(EXIT)
    env = {**os.environ, "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    env.pop("PYTHONUNBUFFERED", None)
    alone = {k: v for k, v in env.items() if k != "LOCAL_RANK"}
    for how, environ, status, torn_down in (
        ("0", env, 0, False), ("3", env, 3, True), ("bug", env, 1, True), ("0", alone, 0, True)
    ):  # fmt: skip
        proc = subprocess.run([sys.executable, str(script), how], env=environ, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert proc.returncode == status, proc.stderr
        assert proc.stdout == "buffered"
        assert "thread joined" in proc.stderr and "atexit ran" in proc.stderr
        assert ("torn down" in proc.stderr) == torn_down, (how, proc.stderr)
        assert ("KeyError: 'a bug'" in proc.stderr) == (how == "bug")
