"""A served judge (``rlhf-pairs serve-judge``) against in-process calls, on the same inputs in one run.

    python bench/bench_remote.py --size small --requests 12 --rows 8 --words 20 --clients 1 4 --out bench/results/cpu_remote.json

Builds a pair preference LM with random weights (``--size tiny``: the test model; ``small``: 8 layers x 512 hidden, as
``bench_judges.py``) or takes ``--judge PATH``, starts a server process on the loopback interface, and times:

- ``in-process``: ``judge.compare`` on each request's rows, one call after the other, in this process;
- ``remote, C clients``: the same requests sent by C client threads through :class:`~rlhf_pairs.judges.RemoteJudge`
  (one HTTP request per call), the server merging queued requests into shared judge calls (``merge_requests``).

Reported: requests/s, pairs/s, the server's judge calls, and max |P_remote - P_in-process| (0 with one client, which
the server scores request by request; merged batches can move fp32 results in the last bits). Each request holds
``--rows`` pairs of one prompt (a tournament round of a few prompts looks like this). The judge caches are cleared
between methods, the server's by a restart.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

WORDS = "the a model answer question data river light time people water story city night music code plan".split()


def build_judge(size: str, root: Path) -> Path:
    from rlhf_pairs.testing_utils import build_tiny_pair_lm

    if size == "tiny":
        return build_tiny_pair_lm(root / "judge")
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_pairs.testing_utils import train_tiny_bpe_tokenizer

    tokenizer = train_tiny_bpe_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "judge")
    tokenizer.save_pretrained(root / "judge")
    return root / "judge"


def make_requests(count: int, rows: int, words: int, seed: int = 0) -> list[tuple[list, list, list]]:
    rng = random.Random(seed)

    def text(n):
        return " ".join(rng.choice(WORDS) for _ in range(max(1, int(rng.lognormvariate(0, 0.4) * n))))

    out = []
    for _ in range(count):
        prompt = text(words // 2)
        out.append(([prompt] * rows, [text(words) for _ in range(rows)], [text(words) for _ in range(rows)]))
    return out


def start_server(judge: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rlhf_pairs.scripts.serve_judge", "--judge", str(judge), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log_level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("serve-judge did not start")


def timed_remote(url: str, requests: list, clients: int, warm_up: tuple) -> tuple[float, list[list[float]]]:
    from rlhf_pairs.judges import RemoteJudge

    judge = RemoteJudge(url)
    judge.compare(*warm_up)  # warm-up, outside the timing
    results: list = [None] * len(requests)

    def work(start: int):
        for i in range(start, len(requests), clients):
            results[i] = judge.compare(*requests[i])

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - begin, results


def main(argv: list[str] | None = None) -> dict:
    import socket

    import torch
    import transformers

    from rlhf_pairs import __version__
    from rlhf_pairs.judges import load_judge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--judge", help="a pair preference LM directory (default: built with --size)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rows", type=int, default=16, help="pairs per request")
    parser.add_argument("--words", type=int, default=40, help="median response length in words")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        judge_path = Path(args.judge) if args.judge else build_judge(args.size, Path(tmp))
        requests = make_requests(args.requests, args.rows, args.words)
        pairs = args.requests * args.rows
        local = load_judge("pair_lm", str(judge_path), device="cpu")
        local.compare(*make_requests(1, args.rows, args.words, seed=1)[0])  # warm-up of the same size, untimed
        begin = time.perf_counter()
        expected = [local.compare(*r) for r in requests]
        elapsed = time.perf_counter() - begin
        rows = [
            {"method": "in-process", "clients": 1, "seconds": elapsed, "judge_calls": len(requests), "max_abs_dp": 0.0}
        ]
        del local
        for clients in args.clients:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            server = start_server(judge_path, port)
            try:
                elapsed, got = timed_remote(
                    f"http://127.0.0.1:{port}", requests, clients, make_requests(1, args.rows, args.words, seed=1)[0]
                )
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/info") as response:
                    info = json.loads(response.read())
            finally:
                server.terminate()
                server.wait()
            diff = max(abs(a - b) for g, e in zip(got, expected) for a, b in zip(g, e))
            rows.append(
                {
                    "method": "remote",
                    "clients": clients,
                    "seconds": elapsed,
                    "judge_calls": info["judge_calls"] - 1,
                    "max_abs_dp": diff,
                }
            )
    for row in rows:
        row["requests_per_s"] = args.requests / row["seconds"]
        row["pairs_per_s"] = pairs / row["seconds"]
    report = {
        "env": {
            "device": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "transformers": transformers.__version__, "rlhf_pairs": __version__,
            "command": " ".join(["python", "bench/bench_remote.py", *(argv if argv is not None else sys.argv[1:])]),
        },
        "size": args.size, "requests": args.requests, "rows_per_request": args.rows, "results": rows,
    }  # fmt: skip
    table = ["| method | clients | requests/s | pairs/s | judge calls | max abs dP |", "|---|---|---|---|---|---|"]
    table += [
        f"| {r['method']} | {r['clients']} | {r['requests_per_s']:.2f} | {r['pairs_per_s']:.1f} | {r['judge_calls']} | "
        f"{r['max_abs_dp']:.1e} |"
        for r in rows
    ]
    print("\n".join(table))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(f"`{report['env']['command']}`\n\n" + "\n".join(table) + "\n")
    return report


if __name__ == "__main__":
    main()
