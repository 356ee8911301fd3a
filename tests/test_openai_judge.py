"""OpenAIJudge (judge_type openai) against a real OpenAI-compatible server: `transformers serve` on loopback running a
tiny LM that judges by rule (its verdict is read from the second response's last word). Both orders, text verdicts,
concurrency, usage, the unparsable rule, a killed server waited for, the API key never written anywhere, and the
logprob path on recorded OpenAI / vLLM responses (tests/data/README.md)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlhf_pairs.judges.openai_compatible import OpenAIJudge, soft_verdict
from rlhf_pairs.testing_utils import build_tiny_verdict_lm

DATA = Path(__file__).with_name("data")
SECRET = "sk-test-0123456789-never-written"
TRANSFORMERS_CLI = Path(sys.executable).with_name("transformers")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedModel:
    """`transformers serve <model>` on 127.0.0.1 (offline, CPU); ``url`` is its API base."""

    def __init__(self, model: Path, log: Path, port: int | None = None):
        self.model, self.log, self.port = model, log, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = None

    def start(self, timeout: float = 180.0) -> "ServedModel":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [str(TRANSFORMERS_CLI), "serve", str(self.model), "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*cmd, "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def verdict_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    model = build_tiny_verdict_lm(root / "verdict-lm", {"hate": "A", "joke": "B"})
    template = root / "last_word.jinja"
    template.write_text("{{ question }}\nFirst: {{ response_a }}\nSecond: {{ response_b }}")
    return {"root": root, "model": model, "template": template}


@pytest.fixture(scope="module")
def server(verdict_files):
    served = ServedModel(verdict_files["model"], verdict_files["root"] / "serve.log").start()
    yield served
    served.stop()


def test_a_served_judge_compares_both_orders_from_text_verdicts(server, verdict_files, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    judge = OpenAIJudge(server.url, template=str(verdict_files["template"]), max_concurrency=4)
    assert judge.model == str(verdict_files["model"])  # the server's only model, from GET /models
    prompts = ["Say something.", "Say it.", "Anything."]
    p = judge.compare(prompts, ["a fine joke", "pure hate", "meh"], ["pure hate", "a fine joke", "blah"])
    # Row 1: (joke, hate) -> "A", (hate, joke) -> "B": both orders say the joke wins. Row 3: no verdict either way.
    assert p == [1.0, 0.0, 0.5]
    assert judge.usage["requests"] == 6 and judge.usage["from_text"] == 4 and judge.usage["unparsable"] == 2
    assert judge.usage["prompt_tokens"] > 0 and judge.usage["completion_tokens"] >= 6
    assert judge.compare(prompts, ["a fine joke", "pure hate", "meh"], ["pure hate", "a fine joke", "blah"]) == p
    assert judge.usage["requests"] == 6  # cached: no request twice
    assert SECRET not in repr(judge) and SECRET not in repr(judge.client) and SECRET not in json.dumps(judge.usage)
    strict = OpenAIJudge(server.url, template=str(verdict_files["template"]), on_unparsable="error")
    with pytest.raises(ValueError, match=rf"judge server {server.url} .*gave no verdict.*judge_on_unparsable"):
        strict.compare(["Anything."], ["meh"], ["blah"])
    with pytest.raises(ValueError, match=rf"judge server {server.url}/chat/completions refused the request \(400\)"):
        OpenAIJudge(server.url, model="not-served").compare(["x"], ["a"], ["b"])


class Replay(BaseHTTPRequestHandler):
    """Answers every chat completion with one recorded response; records the request bodies."""

    reply: dict = {}
    bodies: list = []

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "recorded", "object": "model"}]})

    def do_POST(self):
        Replay.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._send(Replay.reply)

    def _send(self, payload):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_soft_verdicts_from_recorded_logprobs(tmp_path):
    # OpenAI's reply to AlpacaEval's m/M prompt: P(first = m better) = softmax over the two labels' logprobs, as
    # AlpacaEval's logprob_parser computes p(m) (its preference is 2 - p(m)).
    choice = json.loads((DATA / "openai_alpacaeval_choice.json").read_text())
    import math

    p_m = math.exp(-4.048847) / (math.exp(-4.048847) + math.exp(-0.017597131))
    assert soft_verdict(choice["logprobs"], ("m", "M")) == pytest.approx(p_m, rel=1e-12)
    assert soft_verdict(choice["logprobs"], ("m", "M"), temperature=2.0) == pytest.approx(
        math.exp(-4.048847 / 2) / (math.exp(-4.048847 / 2) + math.exp(-0.017597131 / 2))
    )
    assert soft_verdict(choice["logprobs"], ("A", "B")) is None  # no answer token is a label: the text decides
    # A recorded vLLM chat completion, replayed over HTTP to the whole request path (labels "{" and "{}").
    recorded = json.loads((DATA / "vllm_chat_logprobs.json").read_text())
    Replay.reply, Replay.bodies = recorded, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        template = tmp_path / "braces.jinja"
        template.write_text("{{ question }} {{ response_a }} {{ response_b }}")
        judge = OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", template=str(template), labels=("{", "{}"))
        forward = judge.score_ordered_pairs(["q"], ["a"], ["b"]).tolist()
        expected = math.exp(-0.03710511326789856) / (math.exp(-0.03710511326789856) + math.exp(-3.312495708465576))
        assert forward == pytest.approx([expected], rel=1e-12)
        assert judge.usage == {"requests": 1, "prompt_tokens": 4, "completion_tokens": 3, "from_logprobs": 1}
        body = Replay.bodies[-1]
        assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["temperature"] == 0
        assert body["model"] == "recorded" and body["messages"] == [{"role": "user", "content": "q a b"}]
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------------------------------
# The jobs (rank, iterate, eval) with a served judge and with a local generative judge
# ---------------------------------------------------------------------------------------------------------------------
CANDIDATES = [
    {"prompt": "Tell me something.", "responses": ["that is hate", "a fine joke", "more hate"]},
    {"prompt": [{"role": "user", "content": "Say more."}], "responses": ["a joke", "hate"]},
    {"prompt": "Again.", "responses": ["hate", "hate again, hate", "one more joke", "no hate"]},
]
PAIRS = [
    {"prompt": "What now?", "chosen": "a good joke", "rejected": "pure hate", "subset": "alpacaeval-easy"},
    {"prompt": "And then?", "chosen": "pure hate", "rejected": "a good joke", "subset": "mt-bench-hard"},
    {"prompt": "Why?", "chosen": "the joke", "rejected": "the hate", "subset": "refusals-dangerous"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rlhf_pairs_cli(args: list, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_pairs.cli", *map(str, args)], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def files_hold(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.fixture(scope="module", params=["openai", "llm"])
def judge_flags(request, verdict_files):
    """The same rule judge two ways: served by `transformers serve` (judge_type openai) or loaded in the job (llm)."""
    if request.param == "openai":
        request.getfixturevalue("server")
        url = request.getfixturevalue("server").url
        return ["--judge_type", "openai", "--judge", url, "--judge_template", verdict_files["template"]]
    return ["--judge_type", "llm", "--judge", verdict_files["model"], "--judge_template", verdict_files["template"]]


def test_rank_and_eval_with_a_generative_judge(judge_flags, tmp_path):
    served = judge_flags[1] == "openai"
    data = write_jsonl(tmp_path / "candidates.jsonl", CANDIDATES)
    out = tmp_path / "ranked.jsonl"
    proc = rlhf_pairs_cli(["rank", "--dataset_name", data, "--output", out, *judge_flags], {"OPENAI_API_KEY": SECRET})
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["responses"][row["best"]] for row in rows] == ["a fine joke", "a joke", "one more joke"]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "a joke"}]
    assert ("rank: judge usage" in proc.stderr + proc.stdout) == served  # the API judge's requests and tokens
    # eval: the judge prefers a second response ending in "joke"; RewardBench's report as for any judge.
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    proc = rlhf_pairs_cli(
        ["eval", "--dataset_name", pairs, "--output_dir", tmp_path / "eval", *judge_flags], {"OPENAI_API_KEY": SECRET}
    )
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(2 / 3) and report["position"]["consistency"] == 1.0
    assert report["metadata"]["judge_type"] == judge_flags[1]
    assert report["metadata"]["judge_template"] == str(Path(judge_flags[-1]).resolve())
    if served:
        assert report["metadata"]["judge_model"].endswith("verdict-lm")
    assert not files_hold(tmp_path, SECRET) and SECRET not in proc.stdout + proc.stderr


def test_iterate_one_round_with_a_generative_judge(judge_flags, tiny_pair_lm_path, tmp_path):
    from test_iterate import PROMPTS, RECIPE

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS[:6]])
    out = tmp_path / "run"
    args = ["iterate", "--config", RECIPE, "--model_name_or_path", tiny_pair_lm_path, "--dataset_name", prompts]
    args += ["--output_dir", out, "--rounds", "1", *judge_flags]
    proc = rlhf_pairs_cli(args, {"OPENAI_API_KEY": SECRET})
    rank = json.loads((out / "round_1" / "rank" / "stage.json").read_text())
    assert rank["fingerprint"]["judge_type"] == judge_flags[1] and rank["summary"]["ranked"] == 4
    if judge_flags[1] == "openai":
        assert rank["summary"]["judge_usage"]["requests"] > 0
    assert (out / "round_1" / "eval" / "DONE").exists() and (out / "round_1" / "train" / "model.safetensors").exists()
    assert not files_hold(tmp_path, SECRET) and SECRET not in proc.stdout + proc.stderr


def test_a_killed_server_is_waited_for_and_the_output_equals_an_uninterrupted_run(server, verdict_files, tmp_path):
    rows = [
        {"prompt": f"Question {i}.", "responses": ["pure hate", "a fine joke", "meh", f"joke {i}"]} for i in range(24)
    ]
    data = write_jsonl(tmp_path / "candidates.jsonl", rows)
    flags = ["--judge_type", "openai", "--judge_template", verdict_files["template"], "--shard_size", "2"]
    rlhf_pairs_cli(
        ["rank", "--dataset_name", data, "--output", tmp_path / "reference.jsonl", "--judge", server.url, *flags]
    )
    second = ServedModel(verdict_files["model"], tmp_path / "second.log").start()
    out = tmp_path / "ranked.jsonl"
    args = [sys.executable, "-m", "rlhf_pairs.cli", "rank", "--dataset_name", data, "--output", out]
    job = subprocess.Popen(
        [*map(str, args), "--judge", second.url, *map(str, flags)], env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        shards = Path(str(out) + ".shards")
        deadline = time.monotonic() + 300
        while not list(shards.glob("shard-*.jsonl")) and time.monotonic() < deadline:
            assert job.poll() is None, job.stdout.read()[-4000:]
            time.sleep(0.05)
        second.stop()  # mid-job: the shards after the first are not ranked yet
        assert len(list(shards.glob("shard-*.jsonl"))) < 12
        time.sleep(3)
        second.start()
        output, _ = job.communicate(timeout=600)
        assert job.returncode == 0, output[-4000:]
    finally:
        job.kill()
        second.stop()
    assert "retrying for up to" in output  # the job saw the server go and waited for it
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


def test_behind_serve_judge_and_as_a_reward(server, verdict_files, tiny_pair_lm_path, tmp_path):
    """The same judge behind `serve-judge` reports its prompt (so fingerprints tell two prompts apart), and as the
    reward of online DPO / GRPO groups it is a plain callable over `compare`."""
    from rlhf_pairs.judges import load_judge
    from rlhf_pairs.judges.remote import served_identity
    from rlhf_pairs.rewards import PairwiseRewardFunction
    from rlhf_pairs.serving import judge_info

    served = OpenAIJudge(server.url, template=str(verdict_files["template"]))
    local = load_judge("llm", str(verdict_files["model"]), device="cpu", template=str(verdict_files["template"]))
    for judge, judge_type in ((served, "openai"), (local, "llm")):
        identity = served_identity(judge_info(judge, "j", judge_type))
        assert identity["template"] == str(verdict_files["template"]) and identity["labels"] == ["A", "B"]
    assert served_identity(judge_info(served, "j", "openai"))["served_model"] == served.model
    assert "template" not in judge_info(load_judge("pair_lm", str(tiny_pair_lm_path), device="cpu"), "j", "pair_lm")
    reward = PairwiseRewardFunction(served)
    rewards = reward(prompts=["Say."] * 3, completions=["pure hate", "a fine joke", "more hate"])
    assert rewards[1] == max(rewards) and rewards[0] == rewards[2]  # the joke wins its group
