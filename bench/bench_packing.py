"""Pair-model training throughput with and without packing, on one length mix, in one process.

    # CPU (what bench/RESULTS.md records): a scaled-down Llama, lengths scaled with the sequence length
    python bench/bench_packing.py --out bench/results/cpu_packing.json
    # GPU: the Llama-3-8B architecture (random weights) at RLHFlow's sequence length
    python bench/bench_packing.py --size full --device cuda --comparisons 2048 --out bench/results/h100_packing.json

What is measured, for the same comparisons both ways (forward + backward of every micro-batch, the two ways'
micro-batches interleaved; the optimizer step is left out, its count per epoch is reported instead):

- ``unpacked``: the comparisons in a random order, ``--unpacked-batch`` per micro-batch, right-padded to the
  batch's longest with an attention mask (TRL's collator without packing: what ``train-pm`` did before packing);
- ``packed``: TRL's ``pack_dataset`` (best-fit decreasing) into ``--max-length`` rows, ``--packed-batch`` rows per
  micro-batch, flattened padding-free with position ids restarting per comparison (what ``packing: true`` runs).

Reported: real (non-pad) tokens/s, the padded share of the tokens processed, how full the packed rows are, and the
optimizer steps one epoch takes at 128 sequences per step (comparisons unpacked, packed rows packed).

Lengths: log-normal, median ``--median`` tokens, ``--sigma`` 0.6, clipped to [16, max length]. The defaults for
``--size full`` (median 600, sigma 0.6, clip 3072: mean ~720 tokens) match the issue's own estimate for
``RLHFlow/pair_preference_model_dataset`` (~700k comparisons in ~1.3k steps of 128 packed 3072-token rows);
``--size small`` scales the lengths and the sequence length by 3/16 (576 tokens) and keeps the 8B model's ratio of
sequence length to hidden size (3072 / 4096), which sets how much attention weighs against the dense layers.
Token ids are random: content does not change the cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

SIZES = {
    # hidden, intermediate, layers, heads, kv heads, vocab, max length, median length
    "small": (768, 2688, 2, 6, 2, 16384, 576, 112),
    "full": (4096, 14336, 32, 32, 8, 128256, 3072, 600),
}


def lengths_mix(count: int, median: float, sigma: float, max_length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(max(int(rng.lognormvariate(0.0, sigma) * median), 16), max_length) for _ in range(count)]


def build_model(size: str, attn: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv_heads, vocab, max_length, _ = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_length,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).train()


def micro_batches(examples: list[dict], batch: int, padding_free: bool, pad_id: int, seed: int) -> list[dict]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=padding_free)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # the Trainer's RandomSampler
    return [collator([examples[i] for i in order[k : k + batch]]) for k in range(0, len(order), batch)]


def run(model, modes: dict[str, list[dict]], device: torch.device, warmup: int) -> dict[str, float]:
    """{mode: seconds for forward + backward of its batches after ``warmup`` untimed ones}. The modes' batches are
    interleaved, so that a machine shared with other work slows them alike."""

    def step(batch) -> float:
        start = time.perf_counter()
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        model(**inputs, use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for batches in modes.values():
        for batch in batches[:warmup]:
            step(batch)
    seconds = dict.fromkeys(modes, 0.0)
    for i in range(max(len(batches) for batches in modes.values())):
        for name, batches in modes.items():
            if warmup + i < len(batches):
                seconds[name] += step(batches[warmup + i])
    return seconds


def real_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, flash_attention_2, ...)")
    parser.add_argument("--comparisons", type=int, default=96)
    parser.add_argument("--median", type=float, default=None, help="median comparison length in tokens")
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--unpacked-batch", type=int, default=4, help="comparisons per unpacked micro-batch")
    parser.add_argument("--packed-batch", type=int, default=1, help="packed rows per micro-batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here (and a .md table beside it)")
    args = parser.parse_args(argv)

    import datasets
    import transformers
    import trl
    from trl import pack_dataset

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    max_length, median = SIZES[args.size][6], args.median or SIZES[args.size][7]
    model = build_model(args.size, args.attn, device, dtype)
    vocab = model.config.vocab_size

    # ------------------------------------------------------------------ the same comparisons, both ways
    rng = torch.Generator().manual_seed(args.seed)
    lengths = lengths_mix(args.comparisons, median, args.sigma, max_length, args.seed)
    examples = []
    for n in lengths:
        ids = torch.randint(1, vocab, (n,), generator=rng).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n - 1) + ids[-1:]})  # the label: the last token
    packed = pack_dataset(datasets.Dataset.from_list(examples), max_length, "bfd").to_list()
    modes = {
        "unpacked": micro_batches(examples, args.unpacked_batch, False, 0, args.seed),
        "packed": micro_batches(packed, args.packed_batch, True, 0, args.seed),
    }

    results = {}
    seconds_by_mode = run(model, modes, device, args.warmup)
    for name, batches in modes.items():
        seconds = seconds_by_mode[name]
        timed = batches[args.warmup :]
        real = sum(real_tokens(b) for b in timed)
        processed = sum(int(b["input_ids"].numel()) for b in timed)
        sequences = len(examples) if name == "unpacked" else len(packed)
        results[name] = {
            "micro_batches": len(timed),
            "real_tokens": real,
            "tokens_per_s": round(real / seconds, 1),
            "padded_share": round(1 - real / processed, 4),
            "sequences": sequences,
            "steps_per_epoch_at_128": round(sequences / 128, 3),
        }
    results["packed"]["row_fill"] = round(sum(lengths) / (len(packed) * max_length), 4)
    results["packed"]["comparisons_per_row"] = round(len(examples) / len(packed), 3)
    speedup = results["packed"]["tokens_per_s"] / results["unpacked"]["tokens_per_s"]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU",
        "threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "python": sys.version.split()[0],
        },
        "args": vars(args),
        "model": dict(zip(("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab"), SIZES[args.size][:6])),
        "max_length": max_length,
        "lengths": {"mean": round(sum(lengths) / len(lengths), 1), "min": min(lengths), "max": max(lengths)},
        "results": results,
        "packed_tokens_per_s_over_unpacked": round(speedup, 3),
        "epoch_steps_unpacked_over_packed": round(len(examples) / len(packed), 3),
    }
    table = [
        "| mode | tokens/s | padded share | sequences | steps/epoch at 128 | row fill |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        fill = r.get("row_fill", "")
        table.append(
            f"| {name} | {r['tokens_per_s']} | {r['padded_share']:.1%} | {r['sequences']} | "
            f"{r['steps_per_epoch_at_128']} | {fill} |"
        )
    print(json.dumps(report, indent=2))
    print("\n".join(table))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        Path(args.out).with_suffix(".md").write_text("\n".join(table) + "\n")
    return report


if __name__ == "__main__":
    main()
