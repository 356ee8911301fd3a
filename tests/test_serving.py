"""A judge served over HTTP (issue 19): a real ``serve-judge`` process on the loopback interface, and its clients."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import free_port

from rlhf_pairs.configs import JudgeArguments
from rlhf_pairs.judges import RemoteJudge, RemoteRewardJudge, load_judge
from rlhf_pairs.judges.base import check_pair_inputs
from rlhf_pairs.ranking import rank_candidates_with_stats
from rlhf_pairs.serving import JudgeServer
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
    """``rlhf-pairs serve-judge`` in a child process; ``url`` once ``/health`` answers."""

    def __init__(self, judge, judge_type="pair_lm", *extra, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "rlhf_pairs.scripts.serve_judge", "--judge", str(judge)]
        cmd += ["--judge_type", judge_type, "--port", str(self.port), "--log_level", "warning", *map(str, extra)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve-judge exited {self.proc.returncode}:\n{self.proc.stdout.read()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    assert json.loads(response.read()) == {"status": "ok"}
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        self.stop()
        raise AssertionError("serve-judge did not start within 120 s")

    def info(self) -> dict:
        with urllib.request.urlopen(self.url + "/info", timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


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
    served = JudgeArguments(judge=pair_server.url, judge_type="remote").result_fields()["served"]
    assert served["judge"] == str(tiny_pair_lm_path) and served["class"].endswith("PairPreferenceJudge")
    assert served["dtype"] == "float32" and served["temperature"] == 1.0 and served["pointwise"] is False
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
