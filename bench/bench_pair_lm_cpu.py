"""Side-by-side CPU timing: the RLHFlow card's loop vs PairPreferenceJudge, same model, same pairs, one run.

    python bench/bench_pair_lm_cpu.py --model ~/.cache/rlhf_pairs/smollm2-135m-instruct --pairs 24

The card's loop: one sequence per forward, full-vocabulary logits, two forwards per pair, `.item()` per logit.
Ours: length-sorted batches under a token budget, left padding, last-position logits only.
Prints pairs/s for both, the ratio, and the largest probability difference.
"""

import argparse
import platform
import random
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_pairs import PairPreferenceJudge
from rlhf_pairs.judges.pair_lm import PAIR_TEMPLATE, PLAIN_CHAT_TEMPLATE

WORDS = "the a model answer question data river light time people water story city night music code plan".split()


def text(rng, median):
    n = max(1, int(rng.lognormvariate(np.log(median), 0.6)))
    return " ".join(rng.choice(WORDS) for _ in range(n))


def card_loop(model, tokenizer, prompts, chosen, rejected):
    id_a = tokenizer.encode("A", add_special_tokens=False)[0]
    id_b = tokenizer.encode("B", add_special_tokens=False)[0]
    out = []
    for prompt, c, r in zip(prompts, chosen, rejected):
        context = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False
        )
        probs = []
        for pos in (0, 1):
            a, b = (c, r) if pos == 0 else (r, c)
            content = PAIR_TEMPLATE.format(context=context, response_A=a, response_B=b)
            wrapped = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
            if tokenizer.bos_token and wrapped.startswith(tokenizer.bos_token):
                wrapped = wrapped[len(tokenizer.bos_token) :]
            ids = tokenizer.encode(wrapped, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                logits = model(ids).logits
            la, lb = logits[0, -1, id_a].item(), logits[0, -1, id_b].item()
            probs.append(np.exp([la, lb][pos]) / (np.exp(la) + np.exp(lb)))
        out.append(float(np.mean(probs)))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--prompt-words", type=int, default=40)
    parser.add_argument("--response-words", type=int, default=80)
    args = parser.parse_args()
    rng = random.Random(0)
    prompts = [text(rng, args.prompt_words) for _ in range(args.pairs)]
    chosen = [text(rng, args.response_words) for _ in range(args.pairs)]
    rejected = [text(rng, args.response_words) for _ in range(args.pairs)]
    torch.manual_seed(0)
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, model {args.model}, {args.pairs} pairs"
    )

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa").eval()
    judge = PairPreferenceJudge(model, tokenizer, batch_tokens=4096, cache_size=0)
    judge.compare(prompts[:2], chosen[:2], rejected[:2])  # warm-up
    card_loop(model, tokenizer, prompts[:1], chosen[:1], rejected[:1])

    start = time.perf_counter()
    ref = card_loop(model, tokenizer, prompts, chosen, rejected)
    t_card = time.perf_counter() - start
    start = time.perf_counter()
    ours = judge.compare(prompts, chosen, rejected)
    t_ours = time.perf_counter() - start
    lengths = [len(judge.formatter.encode(p, c, r)) for p, c, r in zip(prompts, chosen, rejected)]
    print(f"tokens per sequence: mean {np.mean(lengths):.0f}, min {min(lengths)}, max {max(lengths)}")
    print(f"card loop : {args.pairs / t_card:7.2f} pairs/s ({t_card:.1f} s)")
    print(f"ours      : {args.pairs / t_ours:7.2f} pairs/s ({t_ours:.1f} s)  ratio {t_card / t_ours:.2f}x")
    print(f"max |P_ours - P_card| = {max(abs(a - b) for a, b in zip(ours, ref)):.2e}")


if __name__ == "__main__":
    main()
