"""rank_candidates: knockout and round robin against an oracle judge with known qualities (pure Python, fast)."""

import math
import random
from collections import Counter

import pytest
import torch

from rlhf_pairs.judges.base import PairwiseJudge
from rlhf_pairs.ranking import (
    RankingResult,
    bracket_order,
    rank_candidates,
    rank_candidates_with_stats,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class OracleJudge:
    """A plain object with ``compare``: P(a beats b) = sigmoid(q_a - q_b) over known qualities (transitive).

    Records every call so tests can count calls and rows (per prompt too).
    """

    def __init__(self, quality: dict[str, float]):
        self.quality = quality
        self.calls: list[list[tuple]] = []

    def compare(self, prompts, responses_a, responses_b):
        assert len(prompts) > 0, "compare must never be called with an empty batch"
        self.calls.append(list(zip(prompts, responses_a, responses_b)))
        return [sigmoid(self.quality[a] - self.quality[b]) for a, b in zip(responses_a, responses_b)]

    @property
    def rows(self) -> list[tuple]:
        return [row for call in self.calls for row in call]


class CountingOracleJudge(PairwiseJudge):
    """A real :class:`PairwiseJudge` over known qualities: ``score_ordered_pairs`` gives P(first beats second) =
    sigmoid(q_first - q_second), so ``compare`` (both orders, averaged) is the oracle's probability.

    The base class counts the ordered pairs it sends to the model in ``num_scored_pairs`` (2 per match with distinct
    texts, cache hits excluded); ``scored_per_prompt`` splits that count by prompt, ``score_calls`` counts batches.
    """

    def __init__(self, quality: dict[str, float]):
        super().__init__()
        self.quality = quality
        self.score_calls = 0
        self.scored_per_prompt: Counter = Counter()

    def score_ordered_pairs(self, prompts, first, second):
        self.score_calls += 1
        self.scored_per_prompt.update(prompts)
        scores = [sigmoid(self.quality[a] - self.quality[b]) for a, b in zip(first, second)]
        return torch.tensor(scores, dtype=torch.float64)


def knockout_matches(n: int, bye_is_best: bool = False) -> int:
    """n - 1 matches for the best plus ceil(n/2) - 1 for the worst; one fewer when n is odd and the round-1 bye
    holder is the best (it joins the losers' bracket only at its first loss, so then never)."""
    return (n - 1) + (math.ceil(n / 2) - 1) - (n % 2 == 1 and bye_is_best)


def bye_is_best(prompt, n, seed, result) -> bool:
    return n % 2 == 1 and result.best == bracket_order(prompt, n, seed)[-1]


class TieJudge:
    def __init__(self):
        self.rows = 0

    def compare(self, prompts, responses_a, responses_b):
        self.rows += len(prompts)
        return [0.5] * len(prompts)


def make_problem(ns, trials, seed=0):
    """Prompts with distinct candidate texts and random qualities; returns (prompts, candidates, quality)."""
    rng = random.Random(seed)
    prompts, candidates, quality = [], [], {}
    for n in ns:
        for t in range(trials):
            prompt = f"prompt n={n} t={t}"
            texts = [f"{prompt} / response {k}" for k in range(n)]
            for text in texts:
                quality[text] = rng.gauss(0.0, 2.0)
            prompts.append(prompt)
            candidates.append(texts)
    return prompts, candidates, quality


def true_best_worst(texts, quality):
    qs = [quality[t] for t in texts]
    return qs.index(max(qs)), qs.index(min(qs))


def rows_per_prompt(judge):
    counts = {}
    for prompt, _, _ in judge.rows:
        counts[prompt] = counts.get(prompt, 0) + 1
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knockout_finds_true_best_and_worst_with_exact_match_counts(seed):
    ns = range(2, 18)  # odd n included: byes in round 1 and later rounds
    prompts, candidates, quality = make_problem(ns, trials=25, seed=seed)
    judge = CountingOracleJudge(quality)
    results, stats = rank_candidates_with_stats(judge, prompts, candidates, seed=seed)
    for prompt, texts, result in zip(prompts, candidates, results):
        n = len(texts)
        assert (result.best, result.worst) == true_best_worst(texts, quality), (prompt, result)
        expected = knockout_matches(n, bye_is_best(prompt, n, seed, result))
        assert expected == math.ceil(3 * n / 2) - 2 - bye_is_best(prompt, n, seed, result)
        assert result.num_comparisons == expected
        # Counted by the judge itself: distinct texts, so no cache hit; both orders of each match scored.
        assert judge.scored_per_prompt[prompt] == 2 * expected, (prompt, n)
        assert result.scores is None and result.skipped is None
    total = sum(r.num_comparisons for r in results)
    assert judge.num_scored_pairs == 2 * total == 2 * stats.rows_judged == 2 * stats.matches
    assert stats.cache_hits == 0
    # Both brackets run side by side: ceil(log2 n) rounds for the largest n (one more when a bye holder loses late
    # in the winners' bracket), however many prompts.
    assert math.ceil(math.log2(17)) <= stats.compare_calls == judge.score_calls <= math.ceil(math.log2(17)) + 1


@pytest.mark.parametrize("n", range(2, 18))
def test_knockout_match_count_from_the_judges_counter(n):
    """Per prompt, the judge's own ``num_scored_pairs`` grows by exactly 2 * (n - 1 + ceil(n/2) - 1), one match less
    when the round-1 bye holder is the best."""
    prompts, candidates, quality = make_problem([n], trials=12, seed=100 + n)
    judge = CountingOracleJudge(quality)
    for seed, (prompt, texts) in enumerate(zip(prompts, candidates)):  # a different bracket (and bye) each time
        before = judge.num_scored_pairs
        (result,) = rank_candidates(judge, [prompt], [texts], seed=seed)
        expected = knockout_matches(n, bye_is_best(prompt, n, seed, result))
        assert judge.num_scored_pairs - before == 2 * expected == 2 * result.num_comparisons
        assert (result.best, result.worst) == true_best_worst(texts, quality)
    # Best only: the judge scores exactly n - 1 matches.
    judge = CountingOracleJudge(quality)
    results = rank_candidates(judge, prompts, candidates, find_worst=False)
    assert judge.num_scored_pairs == 2 * (n - 1) * len(prompts)
    assert all(r.best == true_best_worst(texts, quality)[0] for r, texts in zip(results, candidates))


@pytest.mark.parametrize("n", range(2, 18))
def test_knockout_best_only_takes_n_minus_1_matches(n):
    prompts, candidates, quality = make_problem([n], trials=20, seed=n)
    judge = OracleJudge(quality)
    results = rank_candidates(judge, prompts, candidates, find_worst=False)
    for prompt, texts, result in zip(prompts, candidates, results):
        assert result.best == true_best_worst(texts, quality)[0]
        assert result.worst is None and result.margin is None
        assert result.num_comparisons == n - 1
        assert rows_per_prompt(judge)[prompt] == n - 1
    assert len(judge.calls) == math.ceil(math.log2(n))


def test_knockout_worst_for_every_quality_order_of_small_n():
    """Exhaustive over all quality orders (5! and 6!), one seed each: the bye holder case included."""
    import itertools

    prompts, candidates, quality = [], [], {}
    for n in (3, 5, 6):
        for perm in itertools.permutations(range(n)):
            prompt = f"n={n} perm={perm}"
            texts = [f"{prompt} #{k}" for k in range(n)]
            quality.update({text: float(q) for text, q in zip(texts, perm)})
            prompts.append(prompt)
            candidates.append(texts)
    results = rank_candidates(OracleJudge(quality), prompts, candidates)
    for texts, result in zip(candidates, results):
        assert (result.best, result.worst) == true_best_worst(texts, quality)


def test_two_candidates_one_match_with_margin():
    quality = {"good": 1.0, "bad": -1.0}
    judge = OracleJudge(quality)
    (result,) = rank_candidates(judge, ["p"], [["bad", "good"]])
    assert (result.best, result.worst, result.num_comparisons) == (1, 0, 1)
    assert result.margin == pytest.approx(sigmoid(2.0))
    assert len(judge.rows) == 1


def test_knockout_margin_exactly_when_best_met_worst():
    prompts, candidates, quality = make_problem(range(2, 18), trials=10)
    judge = OracleJudge(quality)
    results = rank_candidates(judge, prompts, candidates)
    judged = {(prompt, frozenset((a, b))) for prompt, a, b in judge.rows}
    with_margin = 0
    for prompt, texts, result in zip(prompts, candidates, results):
        best, worst = texts[result.best], texts[result.worst]
        met = (prompt, frozenset((best, worst))) in judged
        assert (result.margin is not None) == met
        if met:
            assert result.margin == pytest.approx(sigmoid(quality[best] - quality[worst]))
            with_margin += len(texts) > 2
    assert with_margin > 0  # e.g. n = 3 when the bye holder is the best or the worst


def test_round_robin_scores_are_hand_computed_means():
    quality = {"a": 0.0, "b": 1.0, "c": -2.0, "d": 0.5}
    texts = list(quality)
    judge = OracleJudge(quality)
    results, stats = rank_candidates_with_stats(judge, ["p", "q"], [texts, texts[:3]], method="round_robin")
    for result, subset in zip(results, (texts, texts[:3])):
        n = len(subset)
        expected = [
            sum(sigmoid(quality[subset[i]] - quality[subset[j]]) for j in range(n) if j != i) / (n - 1)
            for i in range(n)
        ]
        assert result.scores == pytest.approx(expected, abs=1e-12)
        assert result.num_comparisons == n * (n - 1) // 2
        assert result.best == 1
        assert result.worst == 2
        assert result.margin == pytest.approx(sigmoid(3.0))
    assert len(judge.calls) == 1 and stats.compare_calls == 1  # all pairs of all prompts in one call
    assert stats.rows_judged == 6 + 3


def test_knockout_and_round_robin_agree_on_best():
    prompts, candidates, quality = make_problem(range(2, 10), trials=10, seed=7)
    knockout = rank_candidates(OracleJudge(quality), prompts, candidates, method="knockout", seed=3)
    round_robin = rank_candidates(OracleJudge(quality), prompts, candidates, method="round_robin")
    for k, r in zip(knockout, round_robin):
        assert (k.best, k.worst) == (r.best, r.worst)


def test_number_of_calls_is_number_of_rounds_not_prompts():
    prompts, candidates, quality = make_problem([8], trials=50)
    one, many = OracleJudge(quality), OracleJudge(quality)
    rank_candidates(one, prompts[:1], candidates[:1])
    rank_candidates(many, prompts, candidates)
    assert len(one.calls) == len(many.calls) == 3  # ceil(log2 8)
    assert len(many.rows) == 50 * len(one.rows) == 50 * (7 + 3)
    judge = OracleJudge(quality)
    rank_candidates(judge, prompts, candidates, method="round_robin")
    assert len(judge.calls) == 1 and len(judge.rows) == 50 * 28


def test_results_identical_all_together_sharded_or_reversed():
    prompts, candidates, quality = make_problem([1, 2, 3, 5, 8, 13], trials=6, seed=11)
    # Duplicate texts, a repeated prompt with other candidates, an empty list and a chat prompt.
    quality.update({"x": 0.3, "y": -0.2})
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "?"},
    ]
    prompts += [prompts[5], "dup", chat, "empty"]
    candidates += [["x", "y", candidates[5][0]], ["x", "y", "x", "y", "x"], ["y", "x", "y"], []]
    for text in candidates[5]:
        quality.setdefault(text, 0.0)
    for method in ("knockout", "round_robin"):
        together = rank_candidates(OracleJudge(quality), prompts, candidates, method=method, seed=4)
        half = len(prompts) // 2
        shards = rank_candidates(OracleJudge(quality), prompts[:half], candidates[:half], method=method, seed=4)
        shards += rank_candidates(OracleJudge(quality), prompts[half:], candidates[half:], method=method, seed=4)
        reversed_ = rank_candidates(OracleJudge(quality), prompts[::-1], candidates[::-1], method=method, seed=4)
        singles = [
            rank_candidates(OracleJudge(quality), [p], [c], method=method, seed=4)[0]
            for p, c in zip(prompts, candidates)
        ]
        assert together == shards == reversed_[::-1] == singles


def test_seeds_change_the_bracket_not_the_best():
    prompts, candidates, quality = make_problem([8], trials=5, seed=3)
    brackets, bests = set(), set()
    for seed in range(6):
        judge = OracleJudge(quality)
        results = rank_candidates(judge, prompts, candidates, seed=seed)
        brackets.add(tuple(frozenset(row[1:]) for row in judge.calls[0]))  # first-round pairings
        bests.add(tuple((r.best, r.worst) for r in results))
    assert len(brackets) == 6
    assert bests == {tuple(true_best_worst(texts, quality) for texts in candidates)}


def test_bracket_order_is_a_stable_permutation():
    # A fixed value: the bracket must not depend on Python's per-process hash salt.
    assert bracket_order("What is 2+2?", 8, seed=0) == bracket_order("What is 2+2?", 8, seed=0)
    assert sorted(bracket_order("p", 11, seed=5)) == list(range(11))
    assert bracket_order("What is 2+2?", 8, seed=0) == [1, 2, 5, 6, 4, 3, 7, 0]
    assert bracket_order([{"role": "user", "content": "What is 2+2?"}], 8) == [4, 7, 3, 6, 0, 1, 5, 2]


@pytest.mark.parametrize("method", ["knockout", "round_robin"])
@pytest.mark.parametrize("n", [2, 3, 4, 7, 8])
def test_exact_ties_go_to_the_lower_index(method, n):
    texts = [f"r{k}" for k in range(n)]
    for seed in range(5):
        (result,) = rank_candidates(TieJudge(), ["p"], [texts], method=method, seed=seed)
        assert (result.best, result.worst) == (0, n - 1)


def test_duplicate_texts_are_judged_once_and_tie_by_index():
    quality = {"x": 1.0, "y": 0.0}
    judge = OracleJudge(quality)
    results, stats = rank_candidates_with_stats(judge, ["p"], [["y", "x", "y", "x"]], method="round_robin")
    (result,) = results
    assert result.num_comparisons == 6
    assert len(judge.rows) == 1 and stats.rows_judged == 1 and stats.cache_hits == 5
    assert (result.best, result.worst) == (1, 2)  # equal scores: lowest index best, highest index worst
    assert result.scores[1] == result.scores[3] and result.scores[0] == result.scores[2]

    judge = OracleJudge(quality)
    texts = ["y", "x", "y", "x", "y", "x", "y", "x"]
    for seed in range(10):
        results = rank_candidates(judge, ["p", "p"], [texts, texts], seed=seed)  # the same prompt twice
        assert results[0] == results[1]
        # The knockout runs over the distinct texts (here one match, x against y); the best text's lowest index
        # is the best, the worst text's highest index the worst.
        assert (results[0].best, results[0].worst) == (1, 6)
        assert results[0].num_comparisons == 1 and results[0].margin == pytest.approx(sigmoid(1.0))
    assert len(judge.rows) == 10  # per call (the cache lives for one call), only the (x, y) pair is judged
    # n copies of one text: nothing to judge.
    (result,) = rank_candidates(judge, ["p"], [["z", "z", "z"]])
    assert (result.best, result.worst, result.num_comparisons, result.margin) == (0, 2, 0, 0.5)
    assert len(judge.rows) == 10


def test_reversed_pair_is_derived_not_rejudged():
    quality = {"x": 1.0, "y": 0.0}
    judge = OracleJudge(quality)
    results = rank_candidates(judge, ["p", "p"], [["x", "y"], ["y", "x"]])
    assert [(r.best, r.worst) for r in results] == [(0, 1), (1, 0)]
    assert len(judge.rows) == 1
    assert results[0].margin == pytest.approx(results[1].margin)


def test_skipped_prompts_are_reported_and_others_still_batched():
    prompts, candidates, quality = make_problem([4], trials=3)
    prompts = ["empty", *prompts, "single"]
    candidates = [[], *candidates, ["only one"]]
    judge = OracleJudge(quality)
    results, stats = rank_candidates_with_stats(judge, prompts, candidates)
    assert results[0] == RankingResult(None, None, None, 0, skipped="fewer than 2 candidates")
    assert results[-1] == RankingResult(0, 0, None, 0, skipped="fewer than 2 candidates")
    assert all(r.skipped is None and r.num_comparisons == 3 + 1 for r in results[1:-1])
    assert len(judge.calls) == 2 and stats.matches == 3 * 4
    assert rank_candidates(judge, ["single"], [["a"]], find_worst=False)[0].worst is None
    judge = OracleJudge(quality)
    assert rank_candidates(judge, [], []) == []
    assert rank_candidates(judge, ["a", "b"], [[], ["z"]], method="round_robin")[1].best == 0
    assert judge.calls == []  # never called with an empty batch


def test_works_with_a_pairwise_judge_subclass():
    quality = {f"r{k}": float(k % 5) + k / 100 for k in range(9)}

    class QualityJudge(PairwiseJudge):
        def score_ordered_pairs(self, prompts, first, second):
            return torch.tensor([sigmoid(quality[a] - quality[b]) for a, b in zip(first, second)], dtype=torch.float64)

    judge = QualityJudge()
    texts = list(quality)
    (result,) = rank_candidates(judge, ["p"], [texts])
    assert (result.best, result.worst) == true_best_worst(texts, quality)
    assert judge.num_scored_pairs == 2 * (8 + 4)  # both orders of each match


def test_validation_errors():
    judge = OracleJudge({})
    with pytest.raises(ValueError, match="2 prompts and 1 candidate"):
        rank_candidates(judge, ["a", "b"], [["x", "y"]])
    with pytest.raises(ValueError, match=r"candidates\[1\]"):
        rank_candidates(judge, ["a", "b"], [["x", "y"], "xy"])
    with pytest.raises(ValueError, match=r"candidates\[0\]\[1\]"):
        rank_candidates(judge, ["a"], [["x", 3]])
    with pytest.raises(ValueError, match="knockout, round_robin"):
        rank_candidates(judge, ["a"], [["x", "y"]], method="swiss")
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        rank_candidates(judge, [[{"role": "assistant", "content": "hi"}]], [["x", "y"]])
    with pytest.raises(ValueError, match="must be a list"):
        rank_candidates(judge, "a", [["x", "y"]])


def test_bad_judge_output_is_reported():
    class ShortJudge:
        def compare(self, prompts, a, b):
            return [0.7] * (len(prompts) - 1)

    class NanJudge:
        def compare(self, prompts, a, b):
            return [float("nan")] * len(prompts)

    class ConstantJudge:
        def __init__(self, value):
            self.value = value

        def compare(self, prompts, a, b):
            return [self.value] * len(prompts)

    with pytest.raises(ValueError, match="ShortJudge.compare` returned 0 probabilities for 1 rows"):
        rank_candidates(ShortJudge(), ["p"], [["x", "y"]])
    with pytest.raises(
        ValueError, match=r"NanJudge.compare` returned nan for row 0; expected a probability in \[0, 1\]"
    ):
        rank_candidates(NanJudge(), ["p"], [["x", "y"]])
    for bad, message in ((1.3, "1.3"), (-0.1, "-0.1"), ("0.7", r"'0.7' \(str\)"), (True, r"True \(bool\)")):
        with pytest.raises(ValueError, match=f"ConstantJudge.compare` returned {message} for row 0"):
            rank_candidates(ConstantJudge(bad), ["p"], [["x", "y"]], method="round_robin")

    class TextJudge:
        def compare(self, prompts, a, b):
            return "0.7"

    with pytest.raises(ValueError, match="TextJudge.compare` must return a list of probabilities, got str"):
        rank_candidates(TextJudge(), ["p"], [["x", "y"]])
    import numpy as np

    (ok,) = rank_candidates(ConstantJudge(np.float32(0.75)), ["p"], [["x", "y"]])
    assert (ok.best, ok.worst, ok.margin) == (0, 1, 0.75)
    # The win rate (WinRateCallback, iterate's eval stage) checks the judge's output the same way.
    from rlhf_pairs.win_rate import win_rate

    for bad, message in ((float("nan"), "nan"), ("0.7", r"'0.7' \(str\)")):
        with pytest.raises(ValueError, match=f"ConstantJudge.compare` returned {message} for row 0"):
            win_rate(ConstantJudge(bad), ["p"], ["x"], ["y"])
    assert win_rate(ConstantJudge(0.75), ["p", "q"], ["x", "x"], ["y", "y"]).win_rate == 1.0


def test_pair_outcome_is_the_one_tie_rule():
    from rlhf_pairs import evaluation
    from rlhf_pairs.win_rate import pair_outcome, win_rate_from_probabilities

    assert [pair_outcome(p) for p in (0.5000001, 0.5, 0.4999999, 1.0, 0.0)] == [1.0, 0.5, 0.0, 1.0, 0.0]
    assert evaluation.pair_outcome is pair_outcome
    assert win_rate_from_probabilities([0.9, 0.5, 0.2, 0.5]).win_rate == 0.5


def test_pure_python_modules_import_without_torch():
    """win_rate, ranking and pairs (and data_utils and utils.hashing, which they import) load with torch blocked, bypassing the package's
    torch-heavy ``__init__``."""
    import subprocess
    import sys
    from pathlib import Path

    import rlhf_pairs

    code = (
        "import sys, types\n"
        "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
        "package = types.ModuleType('rlhf_pairs')\n"
        f"package.__path__ = [{str(Path(rlhf_pairs.__file__).parent)!r}]  # submodules load, __init__ does not\n"
        "sys.modules['rlhf_pairs'] = package\n"
        "import rlhf_pairs.win_rate, rlhf_pairs.ranking, rlhf_pairs.pairs\n"
        "assert rlhf_pairs.win_rate.pair_outcome(0.5) == 0.5\n"
        "assert not any(name == 'torch' or name.startswith('torch.') for name in sys.modules if sys.modules[name])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


class CyclicJudge:
    """A noisy, non-transitive judge, as real judges are: every unordered pair of texts gets a seeded random
    P(a beats b), so the preferences hold cycles (a > b > c > a) for most triples."""

    def __init__(self, seed: int):
        self.seed = seed

    def p(self, prompt, a: str, b: str) -> float:
        low, high = sorted((a, b))
        rng = random.Random(f"{self.seed}|{prompt}|{low}|{high}")
        p_low = rng.choice([0.05, 0.2, 0.35, 0.65, 0.8, 0.95])
        return p_low if a == low else 1.0 - p_low

    def compare(self, prompts, responses_a, responses_b):
        return [self.p(q, a, b) for q, a, b in zip(prompts, responses_a, responses_b)]


def has_cycle(judge, prompt, texts) -> bool:
    beats = {
        (i, j)
        for i in range(len(texts))
        for j in range(len(texts))
        if i != j and judge.p(prompt, texts[i], texts[j]) > 0.5
    }
    return any((i, j) in beats and (j, k) in beats and (k, i) in beats for i, j in beats for k in range(len(texts)))


def test_knockout_best_and_worst_differ_with_a_cyclic_judge():
    """With preference cycles, the round-1 bye holder used to be able to win the winners' bracket and lose the
    losers' one (best == worst, chosen == rejected). Now every losers' entrant has lost a winners' match."""
    cyclic_prompts = 0
    for judge_seed in range(4):
        judge = CyclicJudge(judge_seed)
        prompts, candidates = [], []
        for n in range(2, 14):
            for t in range(12):
                prompts.append(f"judge {judge_seed} n={n} t={t}")
                candidates.append([f"response {k} of {n}/{t}" for k in range(n)])
        for seed in range(3):
            results, stats = rank_candidates_with_stats(judge, prompts, candidates, seed=seed)
            for prompt, texts, result in zip(prompts, candidates, results):
                n = len(texts)
                cyclic_prompts += seed == 0 and has_cycle(judge, prompt, texts)
                assert result.best != result.worst, (prompt, seed, result)
                assert result.num_comparisons == knockout_matches(n, bye_is_best(prompt, n, seed, result))
                # The best won every winners' match it played: it beat each candidate it met there.
                order = bracket_order(prompt, n, seed)
                assert sorted(order) == list(range(n))
            assert stats.compare_calls <= math.ceil(math.log2(13)) + 1
    assert cyclic_prompts > 100  # the check has teeth: most of these prompts hold preference cycles


@pytest.mark.parametrize("method", ["knockout", "round_robin"])
def test_best_and_worst_texts_differ_with_duplicates_and_a_cyclic_judge(method):
    """Sampled candidates repeat. The knockout is played over the distinct texts (a duplicate is never judged
    twice), so the best and worst *texts* differ whenever two distinct texts exist, also under preference cycles;
    round robin gives duplicates equal scores, and when every score ties the worst is another text."""
    judge, checked = CyclicJudge(7), 0
    rng = random.Random(0)
    prompts, candidates = [], []
    for n in range(2, 12):
        for t in range(40):
            pool = [f"r{k}" for k in range(rng.randint(1, n))]
            prompts.append(f"n={n} t={t}")
            candidates.append([rng.choice(pool) for _ in range(n)])
    for seed in range(3):
        results = rank_candidates(judge, prompts, candidates, method=method, seed=seed)
        for texts, result in zip(candidates, results):
            distinct = sorted(set(texts))
            if len(distinct) > 1:
                checked += 1
                assert texts[result.best] != texts[result.worst], (texts, result)
                if method == "knockout":
                    m = len(distinct)
                    assert result.num_comparisons <= m - 1 + math.ceil(m / 2) - 1
            assert result.best == texts.index(texts[result.best])  # a text's lowest index
            assert result.worst == len(texts) - 1 - texts[::-1].index(texts[result.worst])  # its highest
    assert checked > 800
    # Round robin, every score tied: the worst is the highest index of a text other than the best's.
    (result,) = rank_candidates(TieJudge(), ["p"], [["x", "y", "x"]], method="round_robin")
    assert (result.best, result.worst) == (0, 1)


def test_knockout_late_entrant_plays_one_more_round_at_most():
    """n = 3: the bye holder meets the round-1 winner in round 2; if it loses, it plays the round-1 loser for the
    worst in round 3 (one call more than before the fix, the same number of matches)."""
    quality = {"a": 0.0, "b": 1.0, "c": 2.0}
    texts = ["a", "b", "c"]
    for seed in range(20):
        order = bracket_order("p", 3, seed)
        judge = OracleJudge(quality)
        (result,) = rank_candidates(judge, ["p"], [texts], seed=seed)
        assert (result.best, result.worst) == (2, 0)
        bye_best = order[-1] == 2
        assert result.num_comparisons == (2 if bye_best else 3)
        assert len(judge.calls) == (2 if bye_best else 3)
