"""From ranked candidates to training rows: DPO preference pairs or rejection-sampling SFT rows.

Input rows are the rank job's output: ``prompt``, ``responses``, ``best``, ``worst``, ``margin`` (P(best beats
worst)), ``skipped``. Output rows use TRL's conversational formats, so the trainer renders them with the policy's
chat template exactly as the prompts were rendered for generation:

- DPO: ``{"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}``;
- SFT: ``{"prompt": [messages], "completion": [{"role": "assistant", ...}]}`` (prompt-completion: loss on the
  completion only).

A row is dropped, and counted under its reason, when it was not ranked (``skipped``), when its chosen and rejected
texts are identical (no preference to learn), or when ``min_margin`` is set and P(best beats worst) is below it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from rlhf_pairs.data_utils import as_messages
from rlhf_pairs.utils.hashing import derived_seed

PAIR_STRATEGIES = ("max_min", "max_random")
DROP_REASONS = ("not_ranked", "identical", "below_margin")


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _drop_reason(row: dict, min_margin: float | None) -> str | None:
    if row.get("skipped") is not None or row.get("best") is None or row.get("worst") is None:
        return "not_ranked"
    if min_margin is not None and (row.get("margin") is None or row["margin"] < min_margin):
        return "below_margin"
    return None


def build_dpo_pairs(
    rows: Sequence[dict], strategy: str = "max_min", min_margin: float | None = None, seed: int = 0
) -> tuple[list[dict], dict[str, int]]:
    """DPO pairs from ranked rows; returns (pairs in input order, counts of kept and dropped rows by reason).

    ``max_min``: chosen = best, rejected = worst (RLHFlow's default). ``max_random``: rejected = a candidate other
    than the best, drawn uniformly with a generator seeded from (seed, prompt index). ``min_margin`` filters on
    P(best beats worst) in both strategies. Raises ``ValueError`` for an unknown strategy.
    """
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"pair strategy must be one of {PAIR_STRATEGIES}, got {strategy!r}")
    counts = Counter({"kept": 0, **dict.fromkeys(DROP_REASONS, 0)})
    pairs = []
    for index, row in enumerate(rows):
        reason = _drop_reason(row, min_margin)
        if reason is None:
            rejected = row["worst"]
            if strategy == "max_random":
                others = [i for i in range(len(row["responses"])) if i != row["best"]]
                rejected = random.Random(derived_seed(seed, "max_random", index)).choice(others)
            chosen_text, rejected_text = row["responses"][row["best"]], row["responses"][rejected]
            if chosen_text == rejected_text:
                reason = "identical"
        if reason is not None:
            counts[reason] += 1
            continue
        counts["kept"] += 1
        pairs.append(
            {
                "prompt": as_messages(row["prompt"]),
                "chosen": _assistant(chosen_text),
                "rejected": _assistant(rejected_text),
                "margin": row.get("margin"),
            }
        )
    return pairs, dict(counts)


def build_sft_rows(rows: Sequence[dict], min_margin: float | None = None) -> tuple[list[dict], dict[str, int]]:
    """Rejection-sampling rows: the best candidate of each ranked prompt as the SFT completion.

    ``min_margin`` keeps a prompt only when its best beats its worst with at least that probability (a prompt
    whose candidates are all alike teaches little). Returns (rows in input order, counts as in :func:`build_dpo_pairs`).
    """
    counts = Counter({"kept": 0, **dict.fromkeys(DROP_REASONS, 0)})
    out = []
    for row in rows:
        reason = _drop_reason(row, min_margin)
        if reason is not None:
            counts[reason] += 1
            continue
        counts["kept"] += 1
        out.append({"prompt": as_messages(row["prompt"]), "completion": _assistant(row["responses"][row["best"]])})
    return out, dict(counts)
