"""From ranked candidates to training rows: DPO preference pairs, SPPO pairs with win-rate targets, or
rejection-sampling SFT rows.

Input rows are the rank job's output: ``prompt``, ``responses``, ``best``, ``worst``, ``margin`` (P(best beats
worst)), ``skipped``. Output rows use TRL's conversational formats, so the trainer renders them with the policy's
chat template exactly as the prompts were rendered for generation:

- DPO: ``{"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}``;
- SFT: ``{"prompt": [messages], "completion": [{"role": "assistant", ...}]}`` (prompt-completion: loss on the
  completion only);
- SPPO: uclaml/SPPO's own training file, ``{"chosen": [messages..., {"role": "assistant", ...}], "rejected": [...],
  "chosen_probs": float, "chosen_probs_win": float, "chosen_probs_lose": float}`` (the prompt implicit in both
  conversations: TRL's ``extract_prompt`` and their ``run_sppo.py`` both take it as ``chosen[:-1]``), see
  :func:`build_sppo_pairs`.

A row is dropped, and counted under its reason, when it was not ranked (``skipped``), when its chosen and rejected
texts are identical (no preference to learn), or when ``min_margin`` is set and P(best beats worst) is below it.

The rank job's own output follows the same rule (:func:`preference_columns`): ``chosen``/``rejected`` are
conversational exactly when the prompt is, so its file trains in TRL's ``DPOTrainer`` as it is; and its ``rewards``
column (:func:`ranking_rewards`) lets RLHFlow's ``run_dpo.py`` pick the same pairs.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence

from rlhf_pairs.data_utils import Prompt, as_messages
from rlhf_pairs.utils.hashing import derived_seed

PAIR_STRATEGIES = ("max_min", "max_random")
DROP_REASONS = ("not_ranked", "identical", "below_margin")
SPPO_COMMIT = "5e61c4e90822fe526d8bbe1a50a6e85a85c30911"  # uclaml/SPPO, the code this package follows
SPPO_PROBABILITY_COLUMNS = ("chosen_probs", "chosen_probs_win", "chosen_probs_lose")


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def preference_columns(prompt: Prompt, chosen: str, rejected: str) -> dict:
    """``chosen``/``rejected`` in TRL's preference format that matches ``prompt``: a message-list prompt gets
    conversational completions (``[{"role": "assistant", "content": text}]``), a string prompt plain strings
    (``trl.data_utils.is_conversational`` looks at one of the columns, so they must agree)."""
    if isinstance(prompt, str):
        return {"chosen": chosen, "rejected": rejected}
    return {"chosen": _assistant(chosen), "rejected": _assistant(rejected)}


def ranking_rewards(n: int, best: int | None, worst: int | None, scores: Sequence[float] | None) -> list[float]:
    """One reward per candidate, RLHFlow's annotation column (``rewards``), from a ranking: ``np.argmax`` of it is
    ``best`` and ``np.argmin`` is ``worst`` (numpy takes the first index on ties), so RLHFlow's ``run_dpo.py``
    (``max_min``: argmax vs argmin; ``max_random``) picks the pairs this package picks. (Checked against
    RLHFlow/Online-RLHF commit 3a00ed83c79a9b748550a631d3f4b01140d2925c, ``dpo_iteration/run_dpo.py``
    ``prepare_data``: it also keeps a pair only when the two rewards differ.)

    - Round robin (``scores`` given): the scores (mean win probabilities). ``best`` is already their first argmax;
      ``worst`` is their *last* argmin, so when other candidates share the lowest score, the worst's reward is put
      one float step below it (``math.nextafter``), which makes it the unique minimum.
    - Knockout (no scores): 1.0 for the best, 0.0 for the worst, 0.5 for every other candidate, the rewards
      :class:`~rlhf_pairs.rewards.PairwiseRewardFunction` gives GRPO for a knockout group (without a worst, 1.0
      and 0.5).
    - Not ranked (fewer than 2 candidates): 0.5 each; equal rewards make no pair in ``run_dpo.py``.
    """
    if best is None or n < 2:
        return [0.5] * n
    if scores is None:
        return [1.0 if i == best else 0.0 if i == worst else 0.5 for i in range(n)]
    rewards = [float(x) for x in scores]
    if worst is not None and rewards.index(min(rewards)) != worst:
        rewards[worst] = math.nextafter(min(rewards), -math.inf)
    return rewards


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
        prompt = as_messages(row["prompt"])  # the policy generated with its chat template: train on the same
        pairs.append(
            {"prompt": prompt, **preference_columns(prompt, chosen_text, rejected_text), "margin": row.get("margin")}
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


def sppo_choice(prob_matrix: Sequence[Sequence[float]], scores: Sequence[float] | None = None) -> dict:
    """SPPO's chosen/rejected and win-rate targets from one prompt's K x K matrix ``P[i][j]`` = P(i beats j) (diagonal
    0.5), as uclaml/SPPO's ``scripts/compute_prob.py`` (commit 5e61c4e, ``prepare_score``) computes them:

    - per-response score: ``scores`` when given (their rule: PairRM's own per-response scores; here a pointwise
      judge's, e.g. a reward model's), else the row mean of P (sum over all K columns, the diagonal 0.5 included,
      divided by K), the score of a general pair judge;
    - chosen ``w`` = the first argmax of the scores, rejected ``l`` = the first argmin (numpy's ``argmax``/``argmin``
      tie rule: when every score ties, w = l = 0);
    - ``chosen_probs`` = ``P[w][l]``; ``chosen_probs_win`` = sum(P[w]) / K and ``chosen_probs_lose`` = sum(P[l]) / K,
      the diagonal counted as 0.5 and the divisor K, not K - 1.

    With a pointwise judge, ``P[i][j]`` = sigmoid((s_i - s_j) / T) is increasing in s_i, so its row means rank the
    responses as the scores do, up to float rounding. With PairRM, their scores are LLM-Blender's
    s_i = mean_j (``C[i][j]`` - ``C[j][i]``) over the logit matrix C and their P = sigmoid(s_i - s_j); a pair judge here
    gives P its own pairwise probabilities (both orders averaged) and ranks by their row means, which agrees with
    the argmax of s only approximately. Sums are exactly rounded (``math.fsum``), so identical texts (identical
    rows) score alike. Returns ``{"chosen", "rejected", "chosen_probs", "chosen_probs_win", "chosen_probs_lose"}``.
    """
    k = len(prob_matrix)
    if k < 2 or any(len(row) != k for row in prob_matrix):
        raise ValueError(f"`prob_matrix` must be a square matrix of at least 2 x 2, got {k} rows")
    row_means = [math.fsum(row) / k for row in prob_matrix]
    ranked_by = row_means if scores is None else [float(x) for x in scores]
    if len(ranked_by) != k:
        raise ValueError(f"`scores` has {len(ranked_by)} values for a {k} x {k} `prob_matrix`")
    w = max(range(k), key=lambda i: (ranked_by[i], -i))  # first argmax
    loser = min(range(k), key=lambda i: (ranked_by[i], i))  # first argmin
    return {
        "chosen": w,
        "rejected": loser,
        "chosen_probs": float(prob_matrix[w][loser]),
        "chosen_probs_win": row_means[w],
        "chosen_probs_lose": row_means[loser],
    }


def build_sppo_pairs(rows: Sequence[dict], min_margin: float | None = None) -> tuple[list[dict], dict[str, int]]:
    """SPPO pairs from rows ranked with ``prob_matrix`` (a round robin, or a pointwise judge); returns (pairs in input
    order, counts of kept and dropped rows by reason, as :func:`build_dpo_pairs`).

    Chosen, rejected and the three targets follow :func:`sppo_choice`: a row ranked by a pointwise judge
    (``num_scored`` > 0) is chosen on the judge's ``scores``, as their code is on PairRM's; any other on the row
    means of its matrix. A row is dropped when it was not ranked, when ``min_margin`` is set and ``chosen_probs``
    (P(chosen beats rejected)) is below it, or when the chosen and rejected texts are identical (every score tied,
    where their code keeps a pair of one response with itself: no preference to learn, as in the other modes).

    Each pair is their training row: ``chosen``/``rejected`` the whole conversation (the prompt as messages, then
    the response), ``chosen_probs``, ``chosen_probs_win``, ``chosen_probs_lose``. Raises ``ValueError`` for a ranked
    row without ``prob_matrix``.
    """
    counts = Counter({"kept": 0, **dict.fromkeys(DROP_REASONS, 0)})
    pairs = []
    for index, row in enumerate(rows):
        if row.get("skipped") is not None or row.get("best") is None:
            counts["not_ranked"] += 1
            continue
        if row.get("prob_matrix") is None:
            raise ValueError(
                f"ranked row {index} has no `prob_matrix`: SPPO needs every pair judged (rank with "
                "ranking_method round_robin and prob_matrix true)"
            )
        scores = row["scores"] if row.get("num_scored") else None
        choice = sppo_choice(row["prob_matrix"], scores)
        chosen_text, rejected_text = row["responses"][choice["chosen"]], row["responses"][choice["rejected"]]
        if min_margin is not None and choice["chosen_probs"] < min_margin:
            counts["below_margin"] += 1
            continue
        if chosen_text == rejected_text:
            counts["identical"] += 1
            continue
        counts["kept"] += 1
        prompt = as_messages(row["prompt"])  # the policy generated with its chat template: train on the same
        pairs.append(
            {
                "chosen": [*prompt, *_assistant(chosen_text)],
                "rejected": [*prompt, *_assistant(rejected_text)],
                **{name: choice[name] for name in SPPO_PROBABILITY_COLUMNS},
            }
        )
    return pairs, dict(counts)


def sppo_target_summary(pairs: Sequence[dict]) -> dict[str, float | None]:
    """Mean and population standard deviation of each SPPO probability column over ``pairs`` (``None`` without
    pairs): how far the win-rate targets spread, i.e. how much the round has to teach."""
    summary: dict[str, float | None] = {}
    for name in SPPO_PROBABILITY_COLUMNS:
        values = [pair[name] for pair in pairs]
        summary[f"mean_{name}"] = statistics.fmean(values) if values else None
        summary[f"std_{name}"] = statistics.pstdev(values) if values else None
    return summary
