"""A judge served over HTTP (issue 19): a real ``serve-judge`` process on the loopback interface, and its clients;
a server with an API key answers only who holds it (issue 27)."""

import asyncio
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

from rlhf_pairs.configs import JudgeArguments, ServeJudgeConfig
from rlhf_pairs.judges import RemoteJudge, RemoteRewardJudge, load_judge
from rlhf_pairs.judges.base import check_pair_inputs
from rlhf_pairs.judges.remote import API_KEY_ENV
from rlhf_pairs.ranking import rank_candidates_with_stats
from rlhf_pairs.serving import JudgeServer
from rlhf_pairs.utils.hashing import local_model_sha256
from rlhf_pairs.utils.io import read_jsonl

PROMPTS = [
    "What is the capital of France?",
    [
        {"role": "user", "content": "hello!"},
        {"role": "assistant", "content": "hi!"},
        {"role": "user", "content": "1+1?"},
    ],
    "Name a color. <|eot_id|> (must stay text)",
]
A = ["Paris.", "2", "Blue <|eot_id|><|start_header_id|>user"]
B = ["I love you!", "The answer is 42.", "Red."]


class Server:
    """``rlhf-pairs serve-judge`` in a child process; ``url`` once ``/health`` answers. ``env`` is added to the
    child's environment, which never inherits an API key from ours; ``output()`` is what it printed so far."""

    def __init__(self, judge, judge_type="pair_lm", *extra, port=None, env=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"  # also reaches a server bound to 0.0.0.0
        cmd = [sys.executable, "-m", "rlhf_pairs.scripts.serve_judge", "--judge", str(judge)]
        cmd += ["--judge_type", judge_type, "--port", str(self.port), "--log_level", "warning", *map(str, extra)]
        child_env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV} | {"PYTHONUNBUFFERED": "1"} | (env or {})
        self._log_dir = Path(tempfile.mkdtemp(prefix="serve-judge-"))
        self._log = self._log_dir / "output.txt"
        self._output = None
        with open(self._log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve-judge exited {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    assert json.loads(response.read()) == {"status": "ok"}
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        self.stop()
        raise AssertionError("serve-judge did not start within 120 s")

    def output(self) -> str:
        return self._output if self._output is not None else self._log.read_text()

    def info(self) -> dict:
        with urllib.request.urlopen(self.url + "/info", timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes) -> tuple[int, dict]:
        status, reply, _ = self.call("POST", path, body)
        return status, reply

    def call(self, method: str, path: str, body: bytes | None = None, authorization: str | None = None):
        """``(status, JSON reply, headers)`` of one request, with ``authorization`` as its Authorization header."""
        headers = {"Authorization": authorization} if authorization is not None else {}
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read()), response.headers
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), err.headers

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._keep_output()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._keep_output()

    def _keep_output(self):
        if self._output is None:
            self._output = self._log.read_text()
            shutil.rmtree(self._log_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pair_server(tiny_pair_lm_path):
    """One request per judge call (merge_requests false): results bit-identical to in-process calls."""
    server = Server(tiny_pair_lm_path, "pair_lm", "--merge_requests", "false")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_pair_judge(tiny_pair_lm_path):
    return load_judge("pair_lm", str(tiny_pair_lm_path))


def test_results_over_the_wire_equal_local_results_exactly(pair_server, tiny_pair_lm_path, local_pair_judge):
    remote = load_judge("remote", pair_server.url)
    assert type(remote) is RemoteJudge
    local_pair_judge.clear_cache()
    assert remote.compare(PROMPTS, A, B) == local_pair_judge.compare(PROMPTS, A, B)  # floats round-trip: ==, not ≈
    info = pair_server.info()
    assert info["judge"] == str(tiny_pair_lm_path) and info["judge_type"] == "pair_lm"
    assert info["class"] == "rlhf_pairs.judges.pair_lm.PairPreferenceJudge" and info["pointwise"] is False
    assert info["dtype"] == "float32" and info["devices"] == ["cpu"] and info["max_length"] == 1024
    assert info["merge_requests"] is False and info["attn_implementation"] == "sdpa"
    # Judge settings a client asks for must be the served judge's (a recipe's judge_dtype, judge_temperature, ...).
    assert (
        load_judge("remote", pair_server.url, dtype="float32", attn_implementation="sdpa").info["judge"]
        == info["judge"]
    )
    assert load_judge("remote", pair_server.url, dtype="float").info["dtype"] == "float32"  # aliases are normalised
    # Fingerprints of finished work record what the server serves, not only its URL.
    fields = JudgeArguments(judge=pair_server.url, judge_type="remote").result_fields()
    served = fields["served"]
    assert served["judge"] == str(tiny_pair_lm_path) and served["class"].endswith("PairPreferenceJudge")
    assert served["dtype"] == "float32" and served["temperature"] == 1.0 and served["pointwise"] is False
    # ... and the digest of its files, beside a local judge's: a judge retrained behind the URL is another judge.
    assert info["judge_sha256"] == fields["judge_sha256"] == local_model_sha256(tiny_pair_lm_path)
    with pytest.raises(
        ValueError, match=r"temperature=2.0 \(the server's: 1.0\), max_length=512 \(the server's: 1024\)"
    ):
        load_judge("remote", pair_server.url, temperature=2.0, max_length=512)


def test_a_tournament_round_is_one_request(pair_server, local_pair_judge):
    remote = RemoteJudge(pair_server.url)
    prompts = ["Tell me a joke.", "Describe a fox."]
    candidates = [["a", "b", "c", "d", "e"], ["one", "two", "three"]]
    results, stats = rank_candidates_with_stats(remote, prompts, candidates)
    # One request per round (ceil(log2 5) = 3 rounds, the bye holder's late losers' match at most one more), not
    # one per match.
    assert remote.num_requests == stats.compare_calls <= 4 < stats.matches == sum(r.num_comparisons for r in results)
    local_pair_judge.clear_cache()
    expected, _ = rank_candidates_with_stats(local_pair_judge, prompts, candidates)
    assert results == expected


def test_the_rank_job_with_a_remote_judge_equals_the_local_run(pair_server, tiny_pair_lm_path, tmp_path):
    from rlhf_pairs.scripts import rank, run

    data = tmp_path / "candidates.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "responses": [a, b, "c"]}) + "\n" for p, a, b in zip(PROMPTS, A, B))
    )
    common = ["--dataset_name", str(data), "--shard_size", "2"]
    run(rank, [*common, "--judge", str(tiny_pair_lm_path), "--output", str(tmp_path / "local.jsonl")])
    summary = run(
        rank,
        [*common, "--judge_type", "remote", "--judge", pair_server.url, "--output", str(tmp_path / "remote.jsonl")],
    )
    assert summary["complete"] and summary["comparisons"] > 0
    assert read_jsonl(tmp_path / "remote.jsonl") == read_jsonl(tmp_path / "local.jsonl")


def test_bad_requests_get_4xx_with_the_local_message_and_the_server_keeps_serving(pair_server):
    status, reply = pair_server.post("/compare", b"{not json")
    assert status == 400 and reply["error"].startswith("malformed JSON")
    status, reply = pair_server.post("/compare", b"[1, 2]")
    assert status == 400 and "JSON object" in reply["error"]
    status, reply = pair_server.post("/compare", json.dumps({"prompts": ["p"]}).encode())
    assert status == 400 and "responses_a" in reply["error"]
    cases = [
        (["p", "q"], ["a"], ["b"]),  # mismatched lengths
        (["p"], ["a"], [3]),  # a non-string response
        ([[{"role": "assistant", "content": "x"}]], ["a"], ["b"]),  # a conversation that does not end with a user turn
    ]
    for prompts, a, b in cases:
        with pytest.raises(ValueError) as local:
            check_pair_inputs(prompts, a, b)
        status, reply = pair_server.post(
            "/compare", json.dumps({"prompts": prompts, "responses_a": a, "responses_b": b}).encode()
        )
        assert (status, reply["error"]) == (400, str(local.value))
    status, reply = pair_server.post("/score", json.dumps({"prompts": ["p"], "responses": ["a"]}).encode())
    assert status == 404 and "no per-response scores" in reply["error"]
    # The client raises the same message before sending anything.
    with pytest.raises(ValueError, match=r"`responses_b\[0\]` must be a string, got int"):
        RemoteJudge(pair_server.url).compare(["p"], ["a"], [3])
    status, reply = pair_server.post(
        "/compare", json.dumps({"prompts": ["p"], "responses_a": ["a"], "responses_b": ["b"]}).encode()
    )
    assert status == 200 and len(reply["probabilities"]) == 1


def test_concurrent_clients_are_merged_into_shared_judge_calls(tiny_pair_lm_path, local_pair_judge):
    server = Server(tiny_pair_lm_path, "pair_lm", "--max_body_mb", "0.002")
    try:
        remote = RemoteJudge(server.url)
        requests = [
            ([f"Question {i}?"] * 3, [f"answer {i}", "yes", "no"], ["maybe", f"{i}", "never"]) for i in range(8)
        ]
        results: dict[int, list[float]] = {}

        def client(i):
            results[i] = remote.compare(*requests[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        info = server.info()
        assert info["requests"] == 8 and info["judge_calls"] <= 8
        for i, rows in enumerate(requests):
            local_pair_judge.clear_cache()
            assert results[i] == pytest.approx(local_pair_judge.compare(*rows), abs=1e-6)  # merged batches: ≈

        # A call over the server's body limit (2 kB) is split into requests that fit; the results are unchanged.
        long = ["word " * 60] * 12
        split = RemoteJudge(server.url)
        local_pair_judge.clear_cache()
        assert split.compare(["Why?"] * 12, long, ["no"] * 12) == pytest.approx(
            local_pair_judge.compare(["Why?"] * 12, long, ["no"] * 12), abs=1e-6
        )
        assert split.num_requests > 1
        status, reply = server.post(
            "/compare",
            json.dumps({"prompts": ["p"] * 300, "responses_a": long * 25, "responses_b": ["b"] * 300}).encode(),
        )
        assert status == 413 and "limit" in reply["error"]
        with pytest.raises(ValueError, match="over the judge server's limit"):
            split.compare(["Why?"], ["word " * 1000], ["no"])
    finally:
        server.stop()


def test_queued_requests_of_one_kind_merge_into_one_judge_call():
    class Counting:
        def __init__(self):
            self.calls = []

        def compare(self, prompts, a, b):
            self.calls.append(len(prompts))
            return [0.25] * len(prompts)

    async def scenario(merge):
        judge = Counting()
        server = JudgeServer([judge], {"pointwise": False}, merge_requests=merge, max_batch_rows=5)
        await server.start()
        # Queued before the worker runs: 2 + 2 rows merge, the third (2 more) would pass max_batch_rows.
        jobs = [server.submit("compare", (["p"] * 2, ["a"] * 2, ["b"] * 2)) for _ in range(3)]
        results = await asyncio.gather(*jobs)
        await server.stop()
        return judge.calls, results

    calls, results = asyncio.run(scenario(True))
    assert calls == [4, 2] and results == [[0.25, 0.25]] * 3
    calls, _ = asyncio.run(scenario(False))
    assert calls == [2, 2, 2]


def test_a_reward_model_server_scores_responses_and_ranks_by_sorting(tiny_reward_model_path):
    server = Server(tiny_reward_model_path, "reward_model", "--merge_requests", "false")
    try:
        remote = RemoteJudge.from_pretrained(server.url)
        assert isinstance(remote, RemoteRewardJudge) and server.info()["pointwise"] is True
        local = load_judge("reward_model", str(tiny_reward_model_path))
        assert remote.score_responses(PROMPTS, A) == local.score_responses(PROMPTS, A)
        assert remote.compare(PROMPTS, A, B) == local.compare(PROMPTS, A, B)  # the same cache history on both sides
        results, stats = rank_candidates_with_stats(remote, PROMPTS[:1], [["x", "Paris.", "I love you!"]])
        assert stats.matches == 0 and stats.rows_scored == 3 and results[0].num_scored == 3
        scores = local.score_responses(PROMPTS[:1] * 3, ["x", "Paris.", "I love you!"])
        assert results[0].best == scores.index(max(scores)) and results[0].scores == scores
    finally:
        server.stop()


def test_a_killed_server_fails_the_call_clearly_or_is_waited_for(tiny_pair_lm_path, local_pair_judge):
    server = Server(tiny_pair_lm_path, "pair_lm", "--merge_requests", "false")
    remote = RemoteJudge(server.url, retry_seconds=1.0)
    local_pair_judge.clear_cache()
    expected = local_pair_judge.compare(PROMPTS, A, B)
    assert remote.compare(PROMPTS, A, B) == expected
    server.kill()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"judge server {server.url} unreachable: \d+ tries"):
        remote.compare(PROMPTS, A, B)
    assert time.monotonic() - start < 10
    # A client with a longer retry window waits for a server restarted on the same port, and gets the same numbers.
    patient = RemoteJudge(server.url, retry_seconds=120, info=remote.info)
    answer = {}
    waiting = threading.Thread(target=lambda: answer.update(p=patient.compare(PROMPTS, A, B)))
    waiting.start()
    time.sleep(1.5)
    restarted = Server(tiny_pair_lm_path, "pair_lm", "--merge_requests", "false", port=server.port)
    try:
        waiting.join(timeout=120)
        assert answer["p"] == expected
    finally:
        restarted.stop()


def test_remote_judge_configuration_errors():
    with pytest.raises(ValueError, match="server's URL"):
        JudgeArguments(judge="models/judge", judge_type="remote")
    with pytest.raises(ValueError, match="http:// or https:// URL"):
        RemoteJudge("127.0.0.1:8000")
    unreachable = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match="is `rlhf-pairs serve-judge` running there"):
        RemoteJudge(unreachable, retry_seconds=0.5)


def test_iterate_and_grpo_use_a_served_judge(pair_server, tiny_pair_lm_path, tmp_path):
    from rlhf_pairs.scripts import grpo, iterate, run

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p}) + "\n"
            for p in ["Tell me a joke.", "Describe a fox.", "Say thanks.", "What is 42?"]
        )
    )
    before = pair_server.info()["requests"]
    metrics = run(iterate, [
        "--config", f"{root}/recipes/iterative_dpo/tiny_cpu.yaml", "--model_name_or_path", str(tiny_pair_lm_path),
        "--judge_type", "remote", "--judge", pair_server.url, "--dataset_name", str(prompts),
        "--output_dir", str(tmp_path / "iterate"), "--rounds", "1", "--prompts_per_round", "3", "--num_eval_prompts", "1",
    ])  # fmt: skip
    assert len(metrics) == 1 and metrics[0]["pairs/kept"] > 0 and metrics[0]["rank/comparisons"] > 0
    assert 0.0 <= metrics[0]["eval/win_rate"] <= 1.0
    after_iterate = pair_server.info()["requests"]
    assert after_iterate > before
    trainer = run(grpo, [
        "--config", f"{root}/recipes/grpo/tiny_cpu.yaml", "--model_name_or_path", str(tiny_pair_lm_path),
        "--judge_type", "remote", "--judge", pair_server.url, "--dataset_name", str(prompts),
        "--output_dir", str(tmp_path / "grpo"), "--win_rate_prompts", "0", "--max_steps", "1",
    ])  # fmt: skip
    (reward,) = trainer.reward_funcs
    assert isinstance(reward.judge, RemoteJudge)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(abs(x) < 1e6 for x in losses)
    assert pair_server.info()["requests"] > after_iterate


def test_the_remote_bench_runs_and_one_client_gets_the_in_process_numbers(tmp_path, tiny_pair_lm_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_remote.py"
    spec = importlib.util.spec_from_file_location("bench_remote", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "remote.json"
    argv = ["--judge", str(tiny_pair_lm_path), "--requests", "3", "--rows", "2", "--clients", "1", "--out", str(out)]
    report = bench.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    local, remote = report["results"]
    assert (local["method"], remote["method"]) == ("in-process", "remote")
    assert remote["max_abs_dp"] == 0.0 and remote["judge_calls"] == 3  # one request, one judge call, same numbers
    assert all(r["pairs_per_s"] > 0 and r["requests_per_s"] > 0 for r in report["results"])
    assert "bench_remote.py" in report["env"]["command"] and "| remote | 1 |" in out.with_suffix(".md").read_text()


def test_a_failing_judge_call_fails_only_its_own_request_and_the_worker_survives():
    class Fragile:
        """Refuses rows whose response is "bad", raises StopIteration / SystemExit on cue, NaN for "nan"."""

        def __init__(self):
            self.calls = []

        def compare(self, prompts, a, b):
            self.calls.append(list(a))
            if "bad" in a:
                raise ValueError("`responses_a` holds 'bad'")
            if "stop" in a:
                raise StopIteration
            if "exit" in a:
                raise SystemExit(3)
            return [float("nan") if x == "nan" else "0.7" if x == "str" else 0.75 for x in a]

    async def scenario():
        judge = Fragile()
        server = JudgeServer([judge], {"pointwise": False}, merge_requests=True)
        await server.start()
        outcomes = await asyncio.gather(
            *(server.submit("compare", (["p"], [text], ["b"])) for text in ("ok", "bad", "fine")),
            return_exceptions=True,
        )
        lone = []
        for text in ("stop", "exit", "nan", "str", "after"):
            try:
                lone.append(await asyncio.wait_for(server.submit("compare", (["p"], [text], ["b"])), timeout=30))
            except Exception as err:  # noqa: BLE001
                lone.append(err)
        await server.stop()
        return judge.calls, outcomes, lone

    calls, merged, lone = asyncio.run(scenario())
    # The merged call failed on "bad": each request was then judged alone, so "ok" and "fine" got their numbers.
    assert calls[:4] == [["ok", "bad", "fine"], ["ok"], ["bad"], ["fine"]]
    assert merged[0] == [0.75] and merged[2] == [0.75]
    assert isinstance(merged[1], ValueError) and "holds 'bad'" in str(merged[1])
    assert isinstance(lone[0], RuntimeError) and "StopIteration" in str(lone[0])  # no hang
    assert isinstance(lone[1], RuntimeError) and "SystemExit" in str(lone[1])  # the worker survived it
    assert isinstance(lone[2], RuntimeError) and "`Fragile.compare` returned nan for row 0" in str(lone[2])
    assert isinstance(lone[3], RuntimeError) and "returned '0.7' (str) for row 0" in str(lone[3])  # as locally
    assert lone[4] == [0.75]  # and still serves


def test_one_worker_per_device_shares_the_queue():
    """--devices cuda:0,cuda:1 loads a judge copy per device, each with a worker on one queue: concurrent requests
    are spread over the copies (here two slow stand-ins), and every request gets its own rows' answers."""
    import time as clock

    class Slow:
        def __init__(self, name):
            self.name, self.rows = name, []

        def compare(self, prompts, a, b):
            clock.sleep(0.2)
            self.rows += list(a)
            return [0.5 + 0.01 * int(x) for x in a]

    async def scenario():
        judges = [Slow("cuda:0"), Slow("cuda:1")]
        server = JudgeServer(judges, {"pointwise": False}, merge_requests=False)
        await server.start()
        started = clock.perf_counter()
        results = await asyncio.gather(*(server.submit("compare", (["p"], [str(i)], ["b"])) for i in range(4)))
        elapsed = clock.perf_counter() - started
        await server.stop()
        return judges, results, elapsed

    judges, results, elapsed = asyncio.run(scenario())
    assert results == [[0.5 + 0.01 * i] for i in range(4)]
    assert sorted(judges[0].rows + judges[1].rows) == ["0", "1", "2", "3"] and judges[0].rows and judges[1].rows
    assert elapsed < 0.2 * 4  # the two copies worked at the same time


# ---- a served judge answers only who holds its key (issue 27) ----

KEY = f"key-{secrets.token_urlsafe(24)}"  # unique: found in an output only if it leaked there
WRONG_KEY = f"wrong-{secrets.token_urlsafe(24)}"


@pytest.fixture(scope="module")
def keyed_server(tiny_pair_lm_path):
    """A server whose key comes from its environment, as recommended; it logs at info (access lines included)."""
    server = Server(
        tiny_pair_lm_path, "pair_lm", "--merge_requests", "false", "--log_level", "info", env={API_KEY_ENV: KEY}
    )
    yield server
    server.stop()
    assert KEY not in server.output()


def test_a_keyed_server_answers_only_who_holds_its_key(keyed_server):
    compare = json.dumps({"prompts": ["p"], "responses_a": ["a"], "responses_b": ["b"]}).encode()
    score = json.dumps({"prompts": ["p"], "responses": ["a"]}).encode()
    assert keyed_server.call("GET", "/health")[:2] == (200, {"status": "ok"})  # open: start-up checks, balancers
    refused = [None, "", "Bearer", "Bearer ", f"Bearer {WRONG_KEY}", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x",
               f"Basic {KEY}", KEY]  # fmt: skip
    routes = [("GET", "/info", None), ("POST", "/compare", compare), ("POST", "/score", score),
              ("GET", "/docs", None), ("GET", "/openapi.json", None), ("GET", "/no-such-route", None)]  # fmt: skip
    for method, path, body in routes:
        for authorization in refused:
            status, reply, headers = keyed_server.call(method, path, body, authorization)
            assert (status, headers["WWW-Authenticate"], list(reply)) == (401, "Bearer", ["error"]), (path, reply)
            assert KEY not in json.dumps(reply) and "Authorization: Bearer" in reply["error"]
    status, info, _ = keyed_server.call("GET", "/info", authorization=f"Bearer {KEY}")
    assert status == 200 and info["judge_type"] == "pair_lm" and KEY not in json.dumps(info)
    status, reply, _ = keyed_server.call("POST", "/compare", compare, f"bearer {KEY}")  # the scheme has no case
    assert status == 200 and len(reply["probabilities"]) == 1
    status, reply, _ = keyed_server.call("POST", "/score", score, f"Bearer {KEY}")
    assert status == 404 and "no per-response scores" in reply["error"]  # past the key: the route's own answer
    # The key is checked before the body is read: a request announcing 1000 bytes and sending none is answered at
    # once (a server reading the body first would wait for it).
    connection = http.client.HTTPConnection("127.0.0.1", keyed_server.port, timeout=10)
    try:
        connection.putrequest("POST", "/compare")
        connection.putheader("Content-Length", "1000")
        connection.putheader("Authorization", f"Bearer {WRONG_KEY}")
        connection.endheaders()
        assert connection.getresponse().status == 401
    finally:
        connection.close()
    output = keyed_server.output()
    assert "API key required" in output and '"POST /compare HTTP/1.1" 401' in output  # the log has the refusals...
    assert KEY not in output and WRONG_KEY not in output  # ...but not the keys


def test_the_client_sends_the_key_from_the_environment_and_never_shows_it(
    keyed_server, local_pair_judge, tiny_pair_lm_path, tmp_path, monkeypatch, caplog
):
    from rlhf_pairs.scripts import rank, run

    caplog.set_level("DEBUG")
    monkeypatch.setenv(API_KEY_ENV, KEY)
    remote = load_judge("remote", keyed_server.url)
    local_pair_judge.clear_cache()
    assert remote.compare(PROMPTS, A, B) == local_pair_judge.compare(PROMPTS, A, B)
    served = JudgeArguments(judge=keyed_server.url, judge_type="remote").result_fields()
    assert served["served"]["judge"] == str(tiny_pair_lm_path)
    # A job end to end: its outputs, shards and fingerprints hold no trace of the key.
    data = tmp_path / "candidates.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "responses": [a, b, "c"]}) + "\n" for p, a, b in zip(PROMPTS, A, B))
    )
    out = tmp_path / "ranked.jsonl"
    summary = run(rank, ["--dataset_name", str(data), "--judge_type", "remote", "--judge", keyed_server.url,
                         "--output", str(out), "--shard_size", "2"])  # fmt: skip
    assert summary["complete"] and len(read_jsonl(out)) == len(PROMPTS)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) > 2 and not [path for path in written if KEY.encode() in path.read_bytes()]
    shown = [repr(remote), json.dumps(remote.info), json.dumps(served), json.dumps(summary, default=str)]
    assert KEY not in "".join(shown)

    # The argument overrides the environment; without a key, or with a wrong one, a clear error without the keys.
    monkeypatch.delenv(API_KEY_ENV)
    assert RemoteJudge(keyed_server.url, api_key=KEY).compare(PROMPTS[:1], A[:1], B[:1]) == remote.compare(
        PROMPTS[:1], A[:1], B[:1]
    )
    with pytest.raises(PermissionError, match=rf"{keyed_server.url} requires an API key .*set {API_KEY_ENV}"):
        RemoteJudge(keyed_server.url)
    monkeypatch.setenv(API_KEY_ENV, WRONG_KEY)
    errors = []
    for attempt in (
        lambda: RemoteJudge(keyed_server.url),  # at /info
        lambda: RemoteJudge(keyed_server.url, info=remote.info).compare(PROMPTS, A, B),  # at /compare
        lambda: load_judge("remote", keyed_server.url),
        lambda: JudgeArguments(judge=keyed_server.url, judge_type="remote").result_fields(),
    ):
        with pytest.raises(PermissionError, match=rf"judge server {keyed_server.url} refused the API key") as err:
            attempt()
        assert API_KEY_ENV in str(err.value)
        errors.append(str(err.value))
    with pytest.raises(ValueError, match="printable ASCII without spaces") as err:
        RemoteJudge(keyed_server.url, api_key=f"{KEY} {WRONG_KEY}")
    errors.append(str(err.value))
    assert KEY not in "".join(errors) + caplog.text and WRONG_KEY not in "".join(errors) + caplog.text


def test_a_non_loopback_host_without_a_key_is_refused_before_the_judge_loads(tmp_path, monkeypatch):
    missing_judge = tmp_path / "no-such-judge"  # loading it would fail with a message naming it
    cmd = [sys.executable, "-m", "rlhf_pairs.scripts.serve_judge", "--judge", str(missing_judge)]
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    proc = subprocess.run([*cmd, "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    (error,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "refusing to serve the judge on 0.0.0.0, a non-loopback address, without an API key" in error
    assert f"set {API_KEY_ENV}" in error and "--api_key" in error and "--allow_unauthenticated true" in error
    assert "no-such-judge" not in proc.stderr  # the judge was never looked at

    # Which hosts are loopback (127.0.0.0/8, ::1, localhost); the check is the config's, at argument parsing.
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"):
        assert ServeJudgeConfig(host=host).api_key is None
    for host in ("0.0.0.0", "::", "192.168.1.10", "10.0.0.7", "judge-host"):
        with pytest.raises(ValueError, match="non-loopback address, without an API key"):
            ServeJudgeConfig(host=host)
    assert ServeJudgeConfig(host="0.0.0.0", allow_unauthenticated=True).api_key is None

    # The key: from the environment by default, or the flag; never in the config's repr.
    monkeypatch.setenv(API_KEY_ENV, KEY)
    config = ServeJudgeConfig(host="0.0.0.0")
    assert config.api_key == KEY and "api_key" not in repr(config) and KEY not in repr(config)
    from rlhf_pairs.scripts import parse, serve_judge, short_help

    parsed, _ = parse(serve_judge, ["--judge", str(missing_judge), "--host", "::", "--api_key", WRONG_KEY])
    assert parsed.api_key == WRONG_KEY and WRONG_KEY not in repr(parsed)  # the flag wins over the environment
    help_text = " ".join(short_help(serve_judge).split())
    assert (
        f"Default: the {API_KEY_ENV} environment variable" in help_text and "visible to other users (ps)" in help_text
    )
    with pytest.raises(ValueError, match="contradicts the API key set") as contradiction:
        ServeJudgeConfig(host="0.0.0.0", allow_unauthenticated=True)
    with pytest.raises(ValueError, match="printable ASCII without spaces") as bad:
        ServeJudgeConfig(api_key=f"{KEY}\n")
    assert KEY not in str(contradiction.value) + str(bad.value)


def test_allow_unauthenticated_serves_every_interface_and_says_so(tiny_pair_lm_path):
    server = Server(tiny_pair_lm_path, "pair_lm", "--host", "0.0.0.0", "--allow_unauthenticated", "true")
    try:
        assert server.info()["judge"] == str(tiny_pair_lm_path)  # no key asked
    finally:
        server.stop()
    (line,) = [line for line in server.output().splitlines() if line.startswith("serve-judge:")]
    assert "at http://0.0.0.0:" in line and "UNAUTHENTICATED (--allow_unauthenticated)" in line
