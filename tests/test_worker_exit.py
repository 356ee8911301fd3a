"""How a job's process ends: the process group it made is destroyed after it returns, and a launched worker ends
without the interpreter's teardown (where gloo's worker thread can abort a finished run, SIGABRT after the last
step) yet exits as ``sys.exit`` would: its status, ``atexit`` handlers run, buffered output written."""

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
    from rlhf_pairs.scripts import run, run_command
    from rlhf_pairs.utils.distributed import process_state

    outcome, out = sys.argv[1], Path(sys.argv[2])
    job = types.ModuleType("rlhf_pairs.scripts.job")
    job.RECIPES = "job"
    job.make_parser = lambda prog: argparse.ArgumentParser(prog=prog)

    def main(args):
        process_state()
        gathered = [torch.zeros(1) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, torch.tensor([float(dist.get_rank())]))
        dist.barrier()
        if outcome == "fail":
            raise ValueError("bad input")
        print("gathered", [int(t) for t in gathered], end="")  # no newline, no flush: left in the buffer
        return "done"

    job.main = main
    rank = os.environ.get("RANK", "-")
    atexit.register(lambda: (out / f"atexit-{rank}").write_text("ran"))
    if sys.argv[3] == "in-process":
        try:
            print(run(job, []))
        except ValueError as err:
            print(err)
        print(dist.is_initialized())
    else:
        raise SystemExit(run_command(job, []))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_job_that_returns_destroys_its_process_group(tmp_path):
    """``run`` (in-process, a one-process gloo group): the group is gone after a job that returned, and kept after
    one that raised (destroying it could block the other ranks)."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {
        **os.environ,
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
    }
    for outcome, expected in (("succeed", ["gathered", "[0]done", "False"]), ("fail", ["bad", "input", "True"])):
        proc = subprocess.run([sys.executable, str(script), outcome, str(tmp_path), "in-process"],
                              env={**env, "MASTER_PORT": str(free_port())}, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == expected


def test_launched_workers_exit_with_their_status_after_atexit_and_flushed_output(tmp_path):
    """Two workers under torchrun (as ``accelerate launch`` starts them) through ``run_command``: a job that returned
    exits 0 with its buffered output written and every ``atexit`` handler run; a user error exits 1 with its one
    line, and the launch fails."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RLHF_PAIRS_DEBUG", "PYTHONUNBUFFERED"):  # the suite's environment sets the latter
        env.pop(name, None)
    for outcome in ("succeed", "fail"):
        out = tmp_path / outcome
        out.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(script), outcome, str(out), "launched"]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert sorted(p.name for p in out.glob("atexit-*")) == ["atexit-0", "atexit-1"]
        if outcome == "succeed":
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert proc.stdout.count("gathered [0, 1]") == 2
        else:
            assert proc.returncode != 0
            assert proc.stderr.count("rlhf-pairs job: error: bad input") == 2
            assert "exitcode  : 1 " in proc.stderr  # the workers' own status, not a signal
