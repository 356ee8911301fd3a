"""Judge throughput, side by side with the seed cards' reference loops, in one run on the same inputs.

    # GPU (issue 9): Llama-3-8B and DeBERTa-v3-large (PairRM) architectures, random weights, realistic mix
    python bench/bench_judges.py --size full --pairs 256 --out bench/results/h100.json
    # CPU smoke run (what CI runs): tiny architectures, a few pairs
    python bench/bench_judges.py --size tiny --pairs 6 --tournament-prompts 3 --tournament-sizes 4 5

What is measured (pairs/s, tokens/s, MFU against the device's bf16 peak, peak memory, ratio to the reference,
and max |P - P_reference|):

- pair LM, ``card``: the RLHFlow card's loop, one sequence per forward, full-vocabulary logits, two forwards per
  pair, ``.item()`` per logit (transcribed here, independent of our code);
- pair LM, ``batched``: our judge with prefix sharing off: length-sorted batches, ``logits_to_keep=1``;
- pair LM, ``ours``: our judge as shipped (prefix sharing on);
- PairRM, ``card``: the card's pipeline as reward-bench runs it: fp32, batches of 8 rows in input order, padded to
  the batch's longest row, both orders of every pair;
- PairRM, ``batched``: our judge with transformers' eager attention; ``ours``: as shipped (fused SDPA attention).
  On CUDA both run bf16 (the judge's default); ``ours_fp32`` is also reported for exact parity.
- tournament vs round robin for n candidates per prompt: comparisons counted by the judge and wall time.

Texts: random words with log-normal lengths (medians ``--prompt-tokens`` / ``--response-tokens`` in tokens of
the bench tokenizer), the same for every method. The tokenizer is the project's tiny trained BPE / Unigram one (the
real tokenizers are not reachable offline); token counts, not words, set the cost.

MFU counts the FLOPs the answer needs (every layer at every real token, the LM head at the last position only), the
same for every method, so MFU ratios equal throughput ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
WORDS = (
    "the a model answer question data river light time people water story city night music code plan bridge garden "
    "simple careful quickly because however between number system value example energy history science market"
).split()


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in BF16_PEAK_TFLOPS.items() if key in name), None)


def make_texts(tokenizer, count: int, median_tokens: float, rng: random.Random, sigma: float = 0.6) -> list[str]:
    """``count`` random-word texts whose token counts are log-normal around ``median_tokens`` (clipped to 4-2000)."""
    sample = " ".join(rng.choice(WORDS) for _ in range(400))
    per_word = len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 400
    texts = []
    for _ in range(count):
        tokens = min(max(rng.lognormvariate(math.log(median_tokens), sigma), 4), 2000)
        texts.append(" ".join(rng.choice(WORDS) for _ in range(max(1, round(tokens / per_word)))))
    return texts


@contextmanager
def default_dtype(dtype: torch.dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@contextmanager
def timed(device: torch.device, out: dict):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    out["seconds"] = time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------- pair LM
def build_pair_lm(size: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_pairs.testing_utils import train_tiny_bpe_tokenizer

    tokenizer = train_tiny_bpe_tokenizer()
    shapes = {
        # Llama-3-8B (RLHFlow/pair-preference-model-LLaMA3-8B's architecture).
        "full": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
        "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=49152, max_position_embeddings=8192),
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=4096),
    }[size]  # fmt: skip
    config = LlamaConfig(**shapes, initializer_range=0.02, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):  # built in the target dtype: no fp32 copy of 8B weights
        model = LlamaForCausalLM(config).eval()
    return model, tokenizer


def pair_lm_flops(config, length: int) -> float:
    """Forward FLOPs for one sequence: all layers at every token (causal attention), LM head at the last token."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = d * config.num_key_value_heads // config.num_attention_heads
    per_token = 2 * layers * (2 * d * d + 2 * d * kv + 3 * d * f)
    attention = 2 * layers * length * (length + 1) * d  # QK^T and PV, causal half
    return per_token * length + attention + 2 * d * config.vocab_size


def card_pair_lm(model, tokenizer, prompts, first, second) -> list[float]:
    """The RLHFlow card's loop for P(first better), both orders averaged (a transcription)."""
    import numpy as np

    from rlhf_pairs.judges.pair_lm import PAIR_TEMPLATE, PLAIN_CHAT_TEMPLATE

    id_a = tokenizer.encode("A", add_special_tokens=False)[0]
    id_b = tokenizer.encode("B", add_special_tokens=False)[0]
    out = []
    for prompt, a_text, b_text in zip(prompts, first, second):
        context = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False
        )
        probs = []
        for pos in (0, 1):
            a, b = (a_text, b_text) if pos == 0 else (b_text, a_text)
            content = PAIR_TEMPLATE.format(context=context, response_A=a, response_B=b)
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
            ids = tokenizer.encode(text.replace(tokenizer.bos_token, ""), return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                logits = model(ids.to(model.device)).logits
            la, lb = logits[0, -1, id_a].item(), logits[0, -1, id_b].item()
            probs.append(np.exp([la, lb][pos]) / (np.exp(la) + np.exp(lb)))
        out.append(float(np.mean(probs)))
    return out


# ---------------------------------------------------------------------------------------------------- PairRM
def build_pairrm(size: str, device: torch.device, dtype: torch.dtype):
    from transformers import DebertaV2Config

    from rlhf_pairs.judges.pairrm import DebertaV2PairRM
    from rlhf_pairs.testing_utils import PAIRRM_PREFIX_TOKENS, train_tiny_unigram_tokenizer

    tokenizer = train_tiny_unigram_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PAIRRM_PREFIX_TOKENS}
    shapes = {
        # DeBERTa-v3-large (llm-blender/PairRM-hf's encoder).
        "full": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     vocab_size=128005),
        "small": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                      vocab_size=len(tokenizer)),
        "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=len(tokenizer)),
    }[size]  # fmt: skip
    config = DebertaV2Config(
        **shapes, max_position_embeddings=512, relative_attention=True, position_buckets=256,
        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
        max_relative_positions=-1, type_vocab_size=0, initializer_range=0.02, pad_token_id=tokenizer.pad_token_id,
        n_tasks=1, drop_out=0.05, source_prefix_id=ids["<|source|>"], cand1_prefix_id=ids["<|candidate1|>"],
        cand2_prefix_id=ids["<|candidate2|>"], cand_prefix_id=ids["<|candidate|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = DebertaV2PairRM(config).eval()
    return model, tokenizer


def pairrm_flops(config, length: int) -> float:
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    span = 2 * config.position_buckets
    per_token = 2 * layers * (4 * d * d + 2 * d * f)
    attention = layers * (4 * length * length * d + 4 * length * span * d)  # QK^T, PV, c2p and p2c products
    return per_token * length + attention


def card_pairrm(model, tokenizer, prompts, first, second, batch_size: int = 8) -> list[float]:
    """PairRM the way the card / reward-bench run it: fp32, fixed batches in input order, both orders, P = sigmoid
    of the logit difference. Tokenization is the card's ``tokenize_pair``; padding to the batch's longest row."""
    from rlhf_pairs.judges.pairrm import CAND1_PREFIX, CAND2_PREFIX, SOURCE_PREFIX

    def tokenize_pair(sources, c1s, c2s, source_max_length=1224, candidate_max_length=412):
        ids = []
        max_length = source_max_length + 2 * candidate_max_length
        for s, c1, c2 in zip(sources, c1s, c2s):
            source_ids = tokenizer.encode(SOURCE_PREFIX + s, max_length=source_max_length, truncation=True)
            budget = (max_length - len(source_ids)) // 2
            c1_ids = tokenizer.encode(CAND1_PREFIX + c1, max_length=budget, truncation=True)
            c2_ids = tokenizer.encode(CAND2_PREFIX + c2, max_length=budget, truncation=True)
            ids.append(source_ids + c1_ids + c2_ids)
        return tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding="longest")

    rows = [(p, a, b) for p, a, b in zip(prompts, first, second)] + [
        (p, b, a) for p, a, b in zip(prompts, first, second)
    ]
    logits = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        enc = tokenize_pair(*zip(*chunk))
        with torch.no_grad():
            out = model(**{k: v.to(model.device) for k, v in enc.items()})
        logits.extend(out.logits.tolist())
    n = len(prompts)
    return [1 / (1 + math.exp(-(logits[i] - logits[n + i]))) for i in range(n)]


# ---------------------------------------------------------------------------------------------------- runner
def run_method(name, fn, lengths, flops_per_seq, device, peak, pairs) -> tuple[dict, list[float]]:
    result: dict = {"method": name}
    with timed(device, result):
        probs = fn()
    seconds = result["seconds"]
    print(f"  {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    result["pairs_per_s"] = round(pairs / seconds, 3)
    result["tokens_per_s"] = round(sum(lengths) / seconds, 1)
    if peak:
        result["mfu"] = round(sum(flops_per_seq) / seconds / (peak * 1e12), 4)
    result["seconds"] = round(seconds, 3)
    return result, probs


def bench_judge(kind: str, args, device) -> dict:
    from rlhf_pairs import PairPreferenceJudge, PairRMJudge
    from rlhf_pairs.judges.modeling_pairrm import use_sdpa_attention

    print(f"{kind} ({args.size}), {args.pairs} pairs ...", file=sys.stderr, flush=True)
    fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    builder = build_pair_lm if kind == "pair_lm" else build_pairrm
    model, tokenizer = builder(args.size, device, fast_dtype)
    rng = random.Random(args.seed)
    per_prompt = max(1, args.pairs_per_prompt)  # > 1: several matches of one prompt, as in a tournament round
    prompts = [
        p
        for p in make_texts(tokenizer, -(-args.pairs // per_prompt), args.prompt_tokens, rng)
        for _ in range(per_prompt)
    ]
    prompts = prompts[: args.pairs]
    first = make_texts(tokenizer, args.pairs, args.response_tokens, rng)
    second = make_texts(tokenizer, args.pairs, args.response_tokens, rng)
    judge_kwargs = {"cache_size": 0, "show_progress": False}
    if kind == "pair_lm":
        judges = {
            "batched": PairPreferenceJudge(model, tokenizer, share_prefix=False, **judge_kwargs),
            "ours": PairPreferenceJudge(model, tokenizer, **judge_kwargs),
        }
        encode = judges["ours"].formatter.encode
        lengths = [len(encode(p, a, b)) for p, a, b in zip(prompts, first, second)]
        lengths += [len(encode(p, b, a)) for p, a, b in zip(prompts, first, second)]
        flops = [pair_lm_flops(model.config, n) for n in lengths]
        reference = ("card", lambda: card_pair_lm(model, tokenizer, prompts, first, second))
    else:
        ref_model = builder(args.size, device, torch.float32)[0]  # the card runs fp32
        ref_model.load_state_dict(model.state_dict())
        eager_model = builder(args.size, device, fast_dtype)[0]
        eager_model.load_state_dict(model.state_dict())
        use_sdpa_attention(model)
        judges = {
            "batched": PairRMJudge(eager_model, tokenizer, **judge_kwargs),
            "ours": PairRMJudge(model, tokenizer, **judge_kwargs),
        }
        if fast_dtype != torch.float32:
            fp32_model = builder(args.size, device, torch.float32)[0]
            fp32_model.load_state_dict(model.state_dict())
            use_sdpa_attention(fp32_model)
            judges["ours_fp32"] = PairRMJudge(fp32_model, tokenizer, **judge_kwargs)
        encode = judges["ours"].encoder.encode
        lengths = [len(encode(p, a, b)[0]) for p, a, b in zip(prompts, first, second)]
        lengths += [len(encode(p, b, a)[0]) for p, a, b in zip(prompts, first, second)]
        flops = [pairrm_flops(model.config, n) for n in lengths]
        reference = ("card", lambda: card_pairrm(ref_model, tokenizer, prompts, first, second))
    peak = peak_tflops(device, args.peak_tflops)

    warm = min(4, args.pairs)  # compile kernels / allocate once before timing
    for judge in judges.values():
        judge.compare(prompts[:warm], first[:warm], second[:warm])
    if kind == "pair_lm":
        card_pair_lm(model, tokenizer, prompts[:1], first[:1], second[:1])
    else:
        card_pairrm(ref_model, tokenizer, prompts[:warm], first[:warm], second[:warm])

    rows = []
    ref_row, ref_probs = run_method(reference[0], reference[1], lengths, flops, device, peak, args.pairs)
    rows.append(ref_row)
    for name, judge in judges.items():
        row, probs = run_method(
            name, lambda j=judge: j.compare(prompts, first, second), lengths, flops, device, peak, args.pairs
        )
        row["max_abs_diff_vs_card"] = max(abs(p - q) for p, q in zip(probs, ref_probs))
        row["speedup_vs_card"] = round(ref_row["seconds"] / row["seconds"], 2)
        rows.append(row)
    return {
        "judge": kind,
        "size": args.size,
        "dtype_ours": str(fast_dtype),
        "pairs": args.pairs,
        "pairs_per_prompt": per_prompt,
        "tokens_per_sequence": {
            "mean": round(sum(lengths) / len(lengths), 1),
            "min": min(lengths),
            "max": max(lengths),
        },
        "methods": rows,
    }


class CountingJudge:
    """Wraps a judge, counting the pairs sent through ``compare`` (what a tournament costs)."""

    def __init__(self, judge):
        self.judge, self.pairs = judge, 0

    def compare(self, prompts, a, b):
        self.pairs += len(prompts)
        return self.judge.compare(prompts, a, b)


def bench_tournament(args, device) -> list[dict]:
    from rlhf_pairs import PairRMJudge, rank_candidates
    from rlhf_pairs.ranking import bracket_order

    fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = build_pairrm(args.size, device, fast_dtype)
    from rlhf_pairs.judges.modeling_pairrm import use_sdpa_attention

    use_sdpa_attention(model)
    rng = random.Random(args.seed + 1)
    rows = []
    for n in args.tournament_sizes:
        prompts = make_texts(tokenizer, args.tournament_prompts, args.prompt_tokens, rng)
        candidates = [make_texts(tokenizer, n, args.response_tokens, rng) for _ in prompts]
        for method in ("knockout", "round_robin"):
            judge = CountingJudge(PairRMJudge(model, tokenizer, cache_size=0, show_progress=False))
            row: dict = {"n": n, "method": method, "prompts": len(prompts)}
            with timed(device, row):
                results = rank_candidates(judge, prompts, candidates, method=method, seed=args.seed)
            if method == "knockout":  # n-1 + ceil(n/2)-1, one fewer where the round-1 bye holder is the best
                expected = [
                    n - 1 + math.ceil(n / 2) - 1 - (n % 2 == 1 and r.best == bracket_order(p, n, args.seed)[-1])
                    for p, r in zip(prompts, results)
                ]
            else:
                expected = [n * (n - 1) // 2] * len(prompts)
            row["comparisons_per_prompt"] = judge.pairs / len(prompts)
            row["expected_per_prompt"] = sum(expected) / len(prompts)
            row["counts_ok"] = judge.pairs == sum(expected) and [r.num_comparisons for r in results] == expected
            row["ordered_pairs_scored"] = judge.judge.num_scored_pairs
            row["seconds"] = round(row["seconds"], 3)
            print(f"  tournament n={n} {method}: {row['seconds']} s", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def environment(device: torch.device, argv: list[str]) -> dict:
    import transformers

    import rlhf_pairs

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "rlhf_pairs": getattr(rlhf_pairs, "__version__", "dev"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": " ".join(["python", "bench/bench_judges.py", *argv]),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def to_markdown(report: dict) -> str:
    lines = [f"device: {report['env']['device']}; torch {report['env']['torch']}, "
             f"transformers {report['env']['transformers']}; command: `{report['env']['command']}`", ""]  # fmt: skip
    for bench in report["judges"]:
        lines += [
            f"### {bench['judge']} ({bench['size']}), {bench['pairs']} pairs ({bench['pairs_per_prompt']} per prompt), "
            f"tokens/sequence {bench['tokens_per_sequence']}",
            "",
            "| method | pairs/s | tokens/s | MFU | peak GiB | x card | max abs dP |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in bench["methods"]:
            lines.append(
                f"| {m['method']} | {m['pairs_per_s']} | {m['tokens_per_s']} | {m.get('mfu', '-')} | "
                f"{m.get('peak_memory_gib', '-')} | {m.get('speedup_vs_card', 1.0)} | "
                f"{m.get('max_abs_diff_vs_card', 0.0):.1e} |"
            )
        lines.append("")
    if report.get("tournament"):
        lines += ["### tournament vs round robin", "", "| n | method | comparisons/prompt | expected | ok | s |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["tournament"]:
            lines.append(
                f"| {r['n']} | {r['method']} | {r['comparisons_per_prompt']} | {r['expected_per_prompt']} | "
                f"{r['counts_ok']} | {r['seconds']} |"
            )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["full", "small", "tiny"], default="full")
    parser.add_argument("--judges", nargs="+", choices=["pair_lm", "pairrm"], default=["pair_lm", "pairrm"])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=float, default=150)
    parser.add_argument("--response-tokens", type=float, default=300)
    parser.add_argument("--pairs-per-prompt", type=int, default=1, help="pairs sharing one prompt (tournament-like)")
    parser.add_argument("--tournament-prompts", type=int, default=32)
    parser.add_argument("--tournament-sizes", type=int, nargs="*", default=[4, 8, 16])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak, for MFU on other GPUs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the JSON report here (and a .md next to it)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report = {"env": environment(device, argv), "judges": [bench_judge(kind, args, device) for kind in args.judges]}
    if args.tournament_sizes:
        report["tournament"] = bench_tournament(args, device)
    table = to_markdown(report)
    print(table)
    if args.out:
        from rlhf_pairs.utils.io import write_json_atomic, write_text_atomic

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json_atomic(args.out, report)
        write_text_atomic(str(Path(args.out).with_suffix(".md")), table + "\n")
    return report


if __name__ == "__main__":
    main()
