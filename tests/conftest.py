import contextlib
import importlib
import importlib.util
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Hermetic caches: every cache a test can reach lives in this session's temporary directory, so no run depends on what
# an earlier run or another program left in the user's caches (datasets served a same-named folder from there). Set
# before anything imports datasets, huggingface_hub or transformers, which read these at import; subprocesses inherit
# them. DeepSpeed's compiled CPU op is a build product, not data: kept in the checkout's .cache (as .ci/run does).
CACHE_ROOT = Path(tempfile.mkdtemp(prefix="rlhf_pairs-tests-"))
HERMETIC_CACHES = {
    "HF_HOME": "huggingface",
    "HF_DATASETS_CACHE": "huggingface/datasets",
    "HF_HUB_CACHE": "huggingface/hub",
    "HF_MODULES_CACHE": "huggingface/modules",
    "RLHF_PAIRS_CACHE": "rlhf_pairs",
    "MPLCONFIGDIR": "matplotlib",
    "XDG_CACHE_HOME": "xdg",
}
for _variable, _folder in HERMETIC_CACHES.items():
    os.environ[_variable] = str(CACHE_ROOT / _folder)
os.environ.pop("TRANSFORMERS_CACHE", None)  # deprecated; would override HF_HUB_CACHE for transformers
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


def pytest_unconfigure(config):
    shutil.rmtree(CACHE_ROOT, ignore_errors=True)


from rlhf_pairs.testing_utils import (  # noqa: E402 - after the cache variables
    build_tiny_pair_lm,
    build_tiny_pairrm,
    build_tiny_reward_model,
)

# Helpers shared by the training tests (plain functions: import them with `from conftest import ...`).
NEUTRAL = "the quick brown fox jumps over lazy dog".split()


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """A preference a tiny model can learn: the chosen response contains "!", the rejected one "#"."""
    rng = random.Random(seed)

    def response(marker):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 4))]
        words.insert(rng.randint(0, len(words)), marker)
        return " ".join(words)

    return [
        {
            "prompt": " ".join(rng.choice(NEUTRAL) for _ in range(3)) + ".",
            "chosen": response("!"),
            "rejected": response("#"),
        }
        for _ in range(n)
    ]


def ultrafeedback_row(prompt, chosen: list[dict], rejected: list[dict]) -> dict:
    """A ``HuggingFaceH4/ultrafeedback_binarized`` row: a string prompt, chosen/rejected as whole conversations, and a
    ``messages`` column holding the chosen conversation."""
    return {
        "prompt": prompt,
        "prompt_id": "0" * 64,
        "chosen": chosen,
        "rejected": rejected,
        "messages": chosen,
        "score_chosen": 8.0,
        "score_rejected": 4.0,
    }


def load_script(name):
    """The job behind ``scripts/<name>.py``: ``load_script(name).main(argv)`` parses ``argv`` and runs the job in
    this process, as ``python scripts/<name>.py <argv>`` would."""
    from rlhf_pairs.scripts import run

    assert re.search(rf"from rlhf_pairs\.scripts import .*\b{name}\b", (ROOT / "scripts" / f"{name}.py").read_text())
    module = importlib.import_module(f"rlhf_pairs.scripts.{name}")
    return types.SimpleNamespace(main=lambda argv: run(module, argv))


def accuracy(probs):
    """Pairwise accuracy of P(chosen better), ties counting 0.5."""
    from rlhf_pairs.win_rate import pair_outcome

    return sum(map(pair_outcome, probs)) / len(probs)


@contextlib.contextmanager
def output_lock_held_elsewhere(path):
    """Another process holding ``rlhf_pairs.utils.locking.output_lock(path)`` for the block (SIGKILLed at its end,
    so its lock dies with it); yields the holder's ``Popen``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom rlhf_pairs.utils.locking import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def free_port() -> int:
    """A free TCP port for a launch's rendezvous: back-to-back launches on the default port can find it taken."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_pair_lm_path(tmp_path_factory):
    return build_tiny_pair_lm(tmp_path_factory.mktemp("models") / "tiny-pair-lm")


@pytest.fixture(scope="session")
def tiny_pairrm_path(tmp_path_factory):
    return build_tiny_pairrm(tmp_path_factory.mktemp("models") / "tiny-pairrm")


@pytest.fixture(scope="session")
def tiny_reward_model_path(tmp_path_factory):
    return build_tiny_reward_model(tmp_path_factory.mktemp("models") / "tiny-reward-model")


@pytest.fixture(scope="session")
def launch_two_processes():
    """Run ``scripts/<script>`` under ``accelerate launch`` with 2 CPU processes (recipes/accelerate/cpu_2proc.yaml).

    Returns the combined stdout/stderr; fails the test with that output if the run fails. One thread per process
    on both sides of a 1-vs-2-process comparison keeps CPU float reductions identical.
    """

    def launch(script: str, args: list[str], cwd, timeout: int = 600) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        config = ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += ["--main_process_port", str(free_port())]
        proc = subprocess.run(
            [*cmd, str(ROOT / "scripts" / script), *map(str, args)],
            env=env,
            cwd=cwd,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-6000:]
        return output

    return launch
