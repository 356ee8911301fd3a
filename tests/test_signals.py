"""Stopping (issue 15, point 10) and failing (issue 16) runs: SIGINT/SIGTERM are never lost, also across nested
``stop_on_signals`` blocks, and under ``accelerate launch`` a signal or a failure on one process ends the run on
every process, leaving finished work resumable."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port

from rlhf_pairs.utils import faults
from rlhf_pairs.utils.faults import StopRequested, check_stop, kill_point, stop_on_signals


def swallowed_sigint():
    """A SIGINT whose ``KeyboardInterrupt`` is lost, as when it arrives while a finaliser runs."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pass


def test_a_signal_swallowed_in_a_nested_block_still_stops_the_enclosing_run():
    """iterate (or best-of-n) -> rank_dataset: a SIGINT swallowed after rank's last shard must stop iterate at its
    next kill point, not vanish when rank's own block closes."""
    handler = signal.getsignal(signal.SIGINT)
    with stop_on_signals():
        with stop_on_signals():
            swallowed_sigint()
        with pytest.raises(StopRequested, match="stopped by SIGINT"):
            check_stop()
        with pytest.raises(StopRequested):
            kill_point("anything")
    check_stop()  # the outermost block ends with nothing pending: a later run in this process is not stopped
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_pending_signal_survives_entering_a_nested_block():
    with stop_on_signals():
        swallowed_sigint()
        with stop_on_signals():  # e.g. the rank stage starting after the swallowed interrupt
            with pytest.raises(StopRequested):
                check_stop()
        with pytest.raises(StopRequested):
            check_stop()
    check_stop()


def test_sigterm_in_a_nested_block_exits_with_the_conventional_status():
    with stop_on_signals():
        with stop_on_signals():
            try:
                signal.raise_signal(signal.SIGTERM)
            except SystemExit as exc:
                assert exc.code == 128 + signal.SIGTERM
        with pytest.raises(SystemExit) as exc:
            check_stop()
        assert exc.value.code == 128 + signal.SIGTERM
    check_stop()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_failure_point_fires_only_on_the_chosen_rank(monkeypatch, rank):
    monkeypatch.setattr(faults, "_reached", type(faults._reached)())
    monkeypatch.setenv("RLHF_PAIRS_FAIL_AT", "rank:shard#1")
    monkeypatch.setenv("RLHF_PAIRS_KILL_RANK", "1")
    monkeypatch.setenv("RANK", rank)
    with faults.scope("rank"):
        if rank == "1":
            with pytest.raises(RuntimeError, match="RLHF_PAIRS_FAIL_AT: failing at rank:shard on rank 1"):
                kill_point("shard")
        else:
            kill_point("shard")
            kill_point("shard")


# ------------------------------------------------------------------------------------------------------------------
# accelerate launch, 2 processes: a stand-in judge (no model: the launches cost only their start-up) that holds each
# process at the start of its second shard until the test opens the gate, so the signal lands mid-run every time.
# ------------------------------------------------------------------------------------------------------------------

GATED_JUDGE = '''
import os
import time
from pathlib import Path

import torch

from rlhf_pairs.judges.base import PairwiseJudge


class GatedJudge(PairwiseJudge):
    """Prefers the longer response. ``judge`` is a directory: at the start of its second shard a process writes its
    pid to ``ctl/waiting-<rank>`` and waits until ``ctl/open`` exists (in a subfolder: the files at the top of a
    judge's folder are its identity, and a change there would make finished shards another judge's)."""

    def __init__(self, gate):
        super().__init__()
        self.gate, self.shards = Path(gate) / "ctl", 0

    @classmethod
    def from_pretrained(cls, name_or_path, **options):
        return cls(name_or_path)

    def clear_cache(self):  # called by rank_dataset before each shard
        super().clear_cache()
        self.shards += 1
        if self.shards == 2 and not (self.gate / "open").exists():
            (self.gate / f"waiting-{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
            while not (self.gate / "open").exists():
                time.sleep(0.05)

    def score_ordered_pairs(self, prompts, first, second):
        longer = [(len(a) > len(b)) + 0.5 * (len(a) == len(b)) for a, b in zip(first, second)]
        return torch.tensor(longer, dtype=torch.float64)
'''
JUDGE_MODULE = "rlhf_pairs_test_gated_judge"
WORDS = "sun moon river stone light code tree bird wind rain".split()


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """(folder holding the judge module, candidates file of 12 rows: 6 shards of 2, 3 per process)."""
    folder = tmp_path_factory.mktemp("gated")
    (folder / f"{JUDGE_MODULE}.py").write_text(GATED_JUDGE)
    rng = random.Random(0)
    rows = [
        {"id": i, "prompt": f"Say something about {WORDS[i % 10]}.",
         "responses": [" ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(4)]}
        for i in range(12)
    ]  # fmt: skip
    data = folder / "candidates.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, data


def rank_argv(data, out, gate) -> list[str]:
    return ["--dataset_name", str(data), "--output", str(out), "--judge", str(gate),
            "--judge_type", f"{JUDGE_MODULE}:GatedJudge", "--shard_size", "2"]  # fmt: skip


def start_launch(folder, argv, cwd, **extra_env) -> subprocess.Popen:
    """``accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml scripts/rank.py <argv>``, started in its
    own session (torchrun starts each worker in a session of its own, so the test cleans them up by pid)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]), **extra_env}
    for name in ("RLHF_PAIRS_KILL_AT", "RLHF_PAIRS_INTERRUPT_AT", "RLHF_PAIRS_DEBUG"):
        env.pop(name, None)
    config = ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--main_process_port", str(free_port()), str(ROOT / "scripts" / "rank.py"), *argv]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """The launch's output once it exits; fails the test (killing the launcher) if it runs past ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the launch ran over {timeout} s:\n{proc.communicate()[0][-6000:]}")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped has exited)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_ctrl_c_stops_every_process_of_a_launch_and_the_same_command_resumes(gated, tmp_path, monkeypatch):
    """Ctrl-C in a terminal reaches only `accelerate launch` (torchrun puts each worker in a session of its own):
    it forwards the signal, every worker stops at once and says so, the launch exits non-zero, and the same command
    resumes from the finished shards to the output of an uninterrupted run."""
    from rlhf_pairs.cli import main as cli

    folder, data = gated
    reference = tmp_path / "reference" / "ranked.jsonl"
    (tmp_path / "open" / "ctl").mkdir(parents=True)
    (tmp_path / "open" / "ctl" / "open").touch()
    monkeypatch.syspath_prepend(str(folder))
    cli(["rank", *rank_argv(data, reference, tmp_path / "open")])  # uninterrupted, in this process

    gate, out = tmp_path / "gate", tmp_path / "stopped" / "ranked.jsonl"
    (gate / "ctl").mkdir(parents=True)
    argv = rank_argv(data, out, gate)
    launch = start_launch(folder, argv, tmp_path)
    waiting = [gate / "ctl" / "waiting-0", gate / "ctl" / "waiting-1"]
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not all(p.exists() and p.read_text() for p in waiting):  # each process: 1 shard done, 2nd started
            assert launch.poll() is None and time.monotonic() < deadline, finish(launch, 10)[-6000:]
            time.sleep(0.1)
        workers = [int(p.read_text()) for p in waiting]
        sent = time.monotonic()
        launch.send_signal(signal.SIGINT)
        output = finish(launch, 30)
        while any(map(alive, workers)) and time.monotonic() < sent + 20:
            time.sleep(0.1)
        stopped_after = time.monotonic() - sent
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not any(map(alive, workers)), f"workers still running {stopped_after:.0f} s after the signal"
    assert launch.returncode != 0, output[-6000:]
    assert stopped_after < 15, output[-6000:]  # torchrun SIGKILLs a worker that ignores it only after 30 s
    # Each worker stopped through its handler (not killed), and said so.
    assert output.count("rlhf-pairs rank: stopped by SIGINT; re-run the same command to resume") == 2, output[-6000:]
    shards = sorted(Path(f"{out}.shards").glob("shard-*.jsonl"))
    assert [p.name for p in shards] == ["shard-00000.jsonl", "shard-00001.jsonl"] and not out.exists()
    written = {p: p.stat().st_mtime_ns for p in shards}

    (gate / "ctl" / "open").touch()
    resumed = start_launch(folder, argv, tmp_path)
    output = finish(resumed, 120)
    assert resumed.returncode == 0, output[-6000:]
    assert "over 2 process(es)" in output
    assert out.read_bytes() == reference.read_bytes()
    assert {p: p.stat().st_mtime_ns for p in shards} == written  # the finished shards were kept, not redone


def test_a_failure_on_one_rank_ends_the_run_on_every_rank_with_its_error(gated, tmp_path):
    """Rank 1 raises after its first shard (``RLHF_PAIRS_FAIL_AT`` + ``RLHF_PAIRS_KILL_RANK=1``) while rank 0 goes on
    ranking and then waits at the barrier before the output is joined: the launch ends at once (gloo sees the peer
    gone, torchrun stops the other worker), not after the process group's 3 h timeout, and names rank 1's error."""
    folder, data = gated
    gate, out = tmp_path / "gate", tmp_path / "failed" / "ranked.jsonl"
    (gate / "ctl").mkdir(parents=True)
    (gate / "ctl" / "open").touch()
    launch = start_launch(
        folder, rank_argv(data, out, gate), tmp_path, RLHF_PAIRS_FAIL_AT=":shard#1", RLHF_PAIRS_KILL_RANK="1"
    )
    output = finish(launch, 120)  # the guard; it ends in seconds after the workers' start-up
    assert launch.returncode != 0
    assert "[rank1]: RuntimeError: RLHF_PAIRS_FAIL_AT: failing at :shard on rank 1" in output, output[-6000:]
    assert "[rank0]: RuntimeError: RLHF_PAIRS_FAIL_AT" not in output
    root_cause = output.split("Root Cause (first observed failure):")[-1].split("=====")[0]
    assert "rank      : 1 (local_rank: 1)" in root_cause, output[-3000:]  # torchrun's summary blames rank 1
    shards = Path(f"{out}.shards")
    assert (shards / "shard-00001.jsonl").exists() and not (shards / "shard-00003.jsonl").exists()
    assert not out.exists()


def test_job_loggers_log_on_the_main_process_only_and_work_without_a_process_state(monkeypatch, caplog):
    """rlhf_pairs.utils.distributed.get_logger: accelerate's main-process rule once a process state exists (a
    2-process launch printed every training-job line twice), a plain logger before one exists."""
    import logging

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    from rlhf_pairs.utils.distributed import get_logger

    logger = get_logger("rlhf_pairs.test_logger")
    caplog.set_level(logging.INFO, logger="rlhf_pairs.test_logger")
    monkeypatch.setattr(PartialState, "_shared_state", {})
    logger.info("no state yet")
    for rank in (1, 0):
        state = {"process_index": rank, "num_processes": 2, "distributed_type": DistributedType.MULTI_CPU}
        monkeypatch.setattr(PartialState, "_shared_state", state)
        logger.info("main only, rank %d", rank)
        logger.warning("every rank, rank %d", rank, main_process_only=False)
    assert [r.getMessage() for r in caplog.records] == [
        "no state yet",
        "every rank, rank 1",
        "main only, rank 0",
        "every rank, rank 0",
    ]
