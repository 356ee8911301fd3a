"""Rank n candidate responses per prompt with a judge: a knockout tournament, a full round robin, or, for a pointwise
judge (``score_responses``), sorting by score.

The judge is used only through ``compare(prompts, responses_a, responses_b)`` (P(a is better than b)) and, when it
has one, ``score_responses``. Each prompt's tournament is a generator of matches; all matches of a round, across all
prompts, go to the judge as one batched call, and a prompt's result depends only on its own inputs and the seed.
Also here: the package's tie rule (:func:`pair_outcome`) and the checks of a judge's output. Pure Python, no torch.
How the brackets, byes, ties, cache and probability matrices work: docs/ranking.md, "How the tournaments work".
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from rlhf_pairs.data_utils import Prompt, prompt_key, validate_prompt
from rlhf_pairs.utils.hashing import sha256_json

METHODS = ("knockout", "round_robin")
SKIPPED_TOO_FEW = "fewer than 2 candidates"

Match = tuple[int, int]  # candidate indices (a, b) of one prompt
# A tournament yields the matches of its next round, receives P(a beats b) for each, and returns (best, worst, scores).
Tournament = Generator[list[Match], list[float], tuple[int, "int | None", "list[float] | None"]]


class SupportsCompare(Protocol):
    def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        """P(responses_a[i] is better than responses_b[i] for prompts[i])."""
        ...


class SupportsScores(SupportsCompare, Protocol):
    def score_responses(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """A score per (prompt, response) row, higher is better (a reward)."""
        ...


def is_pointwise(judge: object) -> bool:
    """Whether ``judge`` scores responses one at a time (has a callable ``score_responses``)."""
    return callable(getattr(judge, "score_responses", None))


@dataclass
class RankingResult:
    """The ranking of one prompt's candidates.

    Attributes:
        best: index of the best candidate in the prompt's candidate list; ``None`` when there is no candidate.
        worst: index of the worst candidate; ``None`` with ``find_worst=False`` or when there is no candidate.
        scores: round robin: per candidate, the mean P(it beats another candidate); a pointwise judge: its score
            of each candidate; ``None`` for knockout.
        num_comparisons: matches played for this prompt (one match = one ``compare`` row, both orders judged),
            cache hits included (knockout plays distinct texts only; round robin counts identical-text ties too);
            0 with a pointwise judge.
        skipped: why the prompt was not ranked (``"fewer than 2 candidates"``), else ``None``. A prompt with one
            candidate gets best = 0 (and worst = 0 when asked for), with none best = worst = ``None``.
        margin: P(best beats worst) when those two met in a match (always for round robin, for n = 2 and with a
            pointwise judge), else ``None``.
        num_scored: candidates scored one at a time by a pointwise judge (n, cache hits included); 0 otherwise.
        prob_matrix: with ``prob_matrix=True``, ``P[i][j]`` = P(candidate i beats candidate j) for every ordered pair,
            diagonal 0.5 (docs/ranking.md, "Probability matrices"); else ``None``.
    """

    best: int | None
    worst: int | None
    scores: list[float] | None
    num_comparisons: int
    skipped: str | None = None
    margin: float | None = None
    num_scored: int = 0
    prob_matrix: list[list[float]] | None = None


@dataclass
class RankingStats:
    """What one :func:`rank_candidates_with_stats` call cost.

    Attributes:
        compare_calls: ``judge.compare`` calls made (one per round that needed the judge; with a pointwise judge,
            the one call for the margins).
        rows_judged: match rows sent to the judge (distinct text pairs per prompt, identical texts excluded).
        matches: matches played over all prompts (the sum of ``num_comparisons``).
        rows_scored: pointwise judges: (prompt, text) rows sent to ``score_responses`` (distinct texts per prompt).
    """

    compare_calls: int = 0
    rows_judged: int = 0
    matches: int = 0
    rows_scored: int = 0

    @property
    def cache_hits(self) -> int:
        """Matches answered without a new judge row (repeated text pairs and identical texts)."""
        return self.matches - self.rows_judged


def bracket_order(prompt: Prompt, n: int, seed: int = 0) -> list[int]:
    """The knockout's shuffled candidate indices for a prompt with ``n`` candidates.

    Seeded from a SHA-256 of (seed, prompt, n), not Python's salted ``hash``: the same in every process and run.
    """
    rng = random.Random(int(sha256_json([seed, prompt_key(prompt), n])[:16], 16))
    order = list(range(n))
    rng.shuffle(order)
    return order


def rank_candidates(
    judge: SupportsCompare,
    prompts: Sequence[Prompt],
    candidates: Sequence[Sequence[str]],
    method: str = "knockout",
    seed: int = 0,
    find_worst: bool = True,
    pointwise: bool | None = None,
    prob_matrix: bool = False,
) -> list[RankingResult]:
    """Rank each prompt's candidate responses with a judge; one :class:`RankingResult` per prompt.

    Args:
        judge: any object with ``compare(prompts, responses_a, responses_b) -> list[float]`` returning
            P(a is better than b), e.g. a :class:`~rlhf_pairs.PairwiseJudge`; with ``score_responses`` too (a
            reward model), candidates are ranked by their scores (docs/ranking.md, "Pointwise judges").
        prompts: one prompt per row, a string or a chat message list ending with a user turn.
        candidates: per prompt, the list of candidate responses (strings). Prompts with fewer than 2 candidates
            are skipped (see :class:`RankingResult`); the others are still ranked in the same batched calls.
        method: ``"knockout"`` (n - 1 matches for the best, at most ceil(n/2) - 1 more for the worst) or
            ``"round_robin"`` (all n(n-1)/2 pairs, with per-candidate scores).
        seed: seeds the knockout brackets (unused by round robin). Results depend only on (inputs, seed).
        find_worst: also find the worst candidate (knockout: run the losers' bracket).
        pointwise: ``None`` (default): rank by scores when the judge has ``score_responses``; ``False``: always
            play the tournament of ``method``; ``True``: require scores.
        prob_matrix: also return each ranked prompt's matrix of P(i beats j) (:attr:`RankingResult.prob_matrix`);
            needs ``method="round_robin"`` or a pointwise judge.

    Raises:
        ValueError: mismatched lengths, malformed prompts or candidate lists, an unknown method, ``prob_matrix``
            with knockout and a pair judge, or a judge that returns the wrong number of probabilities (scores) or a
            non-finite one.

    The bracket, tie and caching rules: docs/ranking.md, "How the tournaments work".
    """
    results, _ = rank_candidates_with_stats(
        judge, prompts, candidates, method, seed, find_worst, pointwise, prob_matrix
    )
    return results


def rank_candidates_with_stats(
    judge: SupportsCompare,
    prompts: Sequence[Prompt],
    candidates: Sequence[Sequence[str]],
    method: str = "knockout",
    seed: int = 0,
    find_worst: bool = True,
    pointwise: bool | None = None,
    prob_matrix: bool = False,
) -> tuple[list[RankingResult], RankingStats]:
    """:func:`rank_candidates`, also returning the :class:`RankingStats` of the call (judge calls, rows sent)."""
    _validate(prompts, candidates, method)
    if pointwise is None:
        pointwise = is_pointwise(judge)
    elif pointwise and not is_pointwise(judge):
        raise ValueError(f"pointwise=True needs a judge with score_responses(); {type(judge).__name__} has none")
    if prob_matrix and not pointwise and method != "round_robin":
        raise ValueError(
            f"prob_matrix needs every pair judged: method='round_robin' (or a pointwise judge), got method={method!r}"
        )
    stats = RankingStats()
    results: list[RankingResult | None] = [None] * len(prompts)
    keys = [prompt_key(prompt) for prompt in prompts]
    if pointwise:
        scoring_judge = cast(SupportsScores, judge)  # is_pointwise checked it has score_responses
        ranked = _rank_by_scores(scoring_judge, prompts, candidates, keys, find_worst, stats)
        if prob_matrix:
            _score_matrices(scoring_judge, prompts, candidates, ranked, stats)
        return ranked, stats
    # Per active prompt: its tournament, the matches of its current round, and every match played so far. Match
    # indices are into `entrants[i]`: the candidates themselves (round robin), or one per distinct text (knockout).
    active: dict[int, tuple[Tournament, list[Match], dict[Match, float]]] = {}
    entrants: dict[int, list[int]] = {}
    for i, texts in enumerate(candidates):
        n = len(texts)
        if n < 2:
            only = 0 if n == 1 else None
            results[i] = RankingResult(only, only if find_worst else None, None, 0, skipped=SKIPPED_TOO_FEW)
            continue
        if method == "knockout":
            entrants[i] = list({text: j for j, text in reversed(list(enumerate(texts)))}.values())[::-1]
            m = len(entrants[i])
            if m == 1:  # n copies of one text: nothing to judge, they tie
                results[i] = RankingResult(
                    0, n - 1 if find_worst else None, None, 0, margin=0.5 if find_worst else None
                )
                continue
            tournament = _knockout(bracket_order(prompts[i], m, seed), find_worst)
        else:
            entrants[i] = list(range(n))
            tournament = _round_robin(n)
        active[i] = (tournament, next(tournament), {})

    def texts_of(i: int, match: Match) -> tuple[str, str]:
        return candidates[i][entrants[i][match[0]]], candidates[i][entrants[i][match[1]]]

    cache: dict[tuple, float] = {}  # (prompt key, lower text, higher text) -> P(lower text beats higher text)
    while active:
        todo: dict[tuple, int] = {}  # rows to judge this round -> the prompt asking first
        for i, (_, matches, _) in active.items():
            for match in matches:
                key = _pair_key(keys[i], *texts_of(i, match))
                if key is not None and key not in cache and key not in todo:
                    todo[key] = i
        if todo:
            rows = list(todo)
            probs = judge.compare(
                [prompts[todo[key]] for key in rows], [key[1] for key in rows], [key[2] for key in rows]
            )
            cache.update(zip(rows, check_probabilities(judge, probs, len(rows))))
            stats.compare_calls += 1
            stats.rows_judged += len(rows)

        for i in list(active):
            tournament, matches, played = active[i]
            probs = [_probability(cache, keys[i], *texts_of(i, match)) for match in matches]
            played.update(zip(matches, probs))
            try:
                active[i] = (tournament, tournament.send(probs), played)
            except StopIteration as done:
                best, worst, scores = done.value
                margin = _margin(played, best, worst)
                texts = candidates[i]
                best = entrants[i][best]  # a distinct text's first index (ties go to the lowest index)
                if worst is not None:
                    worst = entrants[i][worst]
                    if texts[worst] == texts[best]:
                        # Round robin, every score tied (duplicates score alike): the highest index of another text.
                        worst = max((j for j, text in enumerate(texts) if text != texts[best]), default=worst)
                    else:
                        worst = max(j for j, text in enumerate(texts) if text == texts[worst])  # its highest index
                result = RankingResult(best, worst, scores, len(played), margin=margin)
                if prob_matrix:  # round robin: every pair was played
                    result.prob_matrix = _matrix_from_matches(len(texts), played)
                results[i] = result
                stats.matches += len(played)
                del active[i]
    return cast("list[RankingResult]", results), stats  # every prompt got its result above


def _rank_by_scores(
    judge: SupportsScores,
    prompts: Sequence[Prompt],
    candidates: Sequence[Sequence[str]],
    keys: list,
    find_worst: bool,
    stats: RankingStats,
) -> list[RankingResult]:
    """Every prompt ranked by its candidates' scores: one ``score_responses`` call over the distinct (prompt, text)
    rows of all prompts, one ``compare`` call for the margins (P(best beats worst))."""
    rows: dict[tuple, int] = {}  # (prompt key, text) -> the prompt asking first
    for i, texts in enumerate(candidates):
        if len(texts) >= 2:
            for text in texts:
                rows.setdefault((keys[i], text), i)
    scored: dict[tuple, float] = {}
    if rows:
        order = list(rows)
        scores = judge.score_responses([prompts[rows[key]] for key in order], [key[1] for key in order])
        scored = dict(zip(order, check_scores(judge, scores, len(order))))
        stats.rows_scored += len(order)
    results: list[RankingResult] = []
    extremes: dict[int, tuple[list[float], int, int]] = {}  # ranked prompt with a worst -> (scores, best, worst)
    for i, texts in enumerate(candidates):
        n = len(texts)
        if n < 2:
            only = 0 if n == 1 else None
            results.append(RankingResult(only, only if find_worst else None, None, 0, skipped=SKIPPED_TOO_FEW))
            continue
        scores = [scored[(keys[i], text)] for text in texts]
        best = max(range(n), key=lambda j: (scores[j], -j))  # ties: lowest index
        worst = min(range(n), key=lambda j: (scores[j], -j)) if find_worst else None  # ties: highest index
        results.append(RankingResult(best, worst, scores, 0, num_scored=n))
        if worst is not None:
            extremes[i] = (scores, best, worst)
    # P(best beats worst): 0.5 for identical texts, else one batched compare (a reward judge answers from its cache).
    distinct = list(extremes)
    for i in distinct:
        _, best, worst = extremes[i]
        if candidates[i][best] == candidates[i][worst]:
            results[i].margin = 0.5
    distinct = [i for i in distinct if results[i].margin is None]
    preference_from_scores = getattr(judge, "preference_from_scores", None)
    if distinct and callable(preference_from_scores):
        # From the scores just sorted (a second compare could rescore them in other batches after a cache eviction).
        differences = [scores[best] - scores[worst] for scores, best, worst in (extremes[i] for i in distinct)]
        for i, margin in zip(distinct, check_probabilities(judge, preference_from_scores(differences), len(distinct))):
            results[i].margin = margin
    elif distinct:
        margins = judge.compare(
            [prompts[i] for i in distinct],
            [candidates[i][extremes[i][1]] for i in distinct],
            [candidates[i][extremes[i][2]] for i in distinct],
        )
        for i, margin in zip(distinct, check_probabilities(judge, margins, len(distinct))):
            results[i].margin = margin
        stats.compare_calls += 1
    return results


def _matrix_from_matches(n: int, played: dict[Match, float]) -> list[list[float]]:
    """``P[i][j]`` = P(i beats j) from a round robin's matches (``P[b][a]`` = 1 - ``P[a][b]``), diagonal 0.5."""
    matrix = [[0.5] * n for _ in range(n)]
    for (a, b), p in played.items():
        matrix[a][b], matrix[b][a] = p, 1.0 - p
    return matrix


def _score_matrices(
    judge: SupportsScores,
    prompts: Sequence[Prompt],
    candidates: Sequence[Sequence[str]],
    results: list[RankingResult],
    stats: RankingStats,
) -> None:
    """Fill ``prob_matrix`` of every ranked result of a pointwise judge: each off-diagonal P(i beats j) computed on
    its own from s_i - s_j (``preference_from_scores``), else from one batched ``compare`` over all ordered pairs."""
    scores = {i: r.scores for i, r in enumerate(results) if r.skipped is None and r.scores is not None}
    ranked = list(scores)  # a ranked result of a pointwise judge always has its scores
    cells = [(i, a, b) for i in ranked for a in range(len(candidates[i])) for b in range(len(candidates[i])) if a != b]
    if not cells:
        return
    preference_from_scores = getattr(judge, "preference_from_scores", None)
    if callable(preference_from_scores):
        differences = [scores[i][a] - scores[i][b] for i, a, b in cells]
        probs = check_probabilities(judge, preference_from_scores(differences), len(cells))
    else:
        probs = judge.compare(
            [prompts[i] for i, _, _ in cells],
            [candidates[i][a] for i, a, _ in cells],
            [candidates[i][b] for i, _, b in cells],
        )
        probs = check_probabilities(judge, probs, len(cells))
        stats.compare_calls += 1
    matrices: dict[int, list[list[float]]] = {}
    for i in ranked:
        n = len(candidates[i])
        matrices[i] = results[i].prob_matrix = [[0.5] * n for _ in range(n)]
    for (i, a, b), p in zip(cells, probs):
        matrices[i][a][b] = p


def _knockout(order: list[int], find_worst: bool) -> Tournament:
    """Winners' bracket over ``order`` and, alongside it, the losers' bracket (docs/ranking.md, "Knockout")."""
    winners: list[int] = list(order)
    losers: list[int] = []
    # The round-1 bye holder (n odd) joins the losers' bracket at its first loss, so it can never be best and worst.
    late_entrant = order[-1] if find_worst and len(order) % 2 else None
    first_round = True
    while len(winners) > 1 or len(losers) > 1:
        winner_matches, loser_matches = _pair_up(winners), _pair_up(losers)
        probs = yield winner_matches + loser_matches
        winner_probs, loser_probs = probs[: len(winner_matches)], probs[len(winner_matches) :]
        next_winners = [_winner(a, b, p) for (a, b), p in zip(winner_matches, winner_probs)]
        next_losers = [_loser(a, b, p) for (a, b), p in zip(loser_matches, loser_probs)]
        if first_round and find_worst:
            next_losers = [_loser(a, b, p) for (a, b), p in zip(winner_matches, winner_probs)]
        # A bye holder goes first in the next round so that it plays there.
        if len(winners) % 2:
            next_winners.insert(0, winners[-1])
        if len(losers) % 2:
            next_losers.insert(0, losers[-1])
        if late_entrant is not None and late_entrant not in next_winners:
            next_losers.insert(0, late_entrant)  # it just lost its first winners' match
            late_entrant = None
        winners, losers, first_round = next_winners, next_losers, False
    return winners[0], (losers[0] if find_worst else None), None


def _round_robin(n: int) -> Tournament:
    """All pairs in one round; scores are mean win probabilities, best/worst their argmax/argmin."""
    matches = [(a, b) for a in range(n) for b in range(a + 1, n)]
    probs = yield matches
    wins: list[list[float]] = [[] for _ in range(n)]
    for (a, b), p in zip(matches, probs):
        wins[a].append(p)
        wins[b].append(1.0 - p)
    # fsum is exactly rounded, so candidates with identical texts get identical scores, whatever their positions.
    scores = [math.fsum(w) / (n - 1) for w in wins]
    best = max(range(n), key=lambda i: (scores[i], -i))  # ties: lowest index
    worst = min(range(n), key=lambda i: (scores[i], -i))  # ties: highest index
    return best, worst, scores


def _pair_up(entrants: list[int]) -> list[Match]:
    """Entrants paired two by two in order; an odd last one is left out (its bye)."""
    return list(zip(entrants[0:-1:2], entrants[1::2]))


def pair_outcome(p: float, tie_credit: float = 0.5) -> float:
    """The outcome of one judged pair from P(the first-named response is better): 1.0 when P > 0.5, 0.0 when
    P < 0.5, and ``tie_credit`` for an exact tie (half a win by default, as win rates count it).

    The one tie rule of the package: win rates (P(completion beats reference)), held-out pairwise accuracy, and judge
    accuracy on RewardBench (whose pairwise pipelines give a tie no credit: ``evaluation.TIE_RULES``) count a pair
    with it.
    """
    return 1.0 if p > 0.5 else tie_credit if p == 0.5 else 0.0


def _winner(a: int, b: int, p: float) -> int:
    """The winner of a match given p = P(a beats b) (the package's one tie rule,
    :func:`pair_outcome`); an exact tie goes to the lower index."""
    outcome = pair_outcome(p)
    return a if outcome == 1.0 else b if outcome == 0.0 else min(a, b)


def _loser(a: int, b: int, p: float) -> int:
    return b if _winner(a, b, p) == a else a


def _pair_key(key: str | tuple, text_a: str, text_b: str) -> tuple | None:
    """The cache key of a text pair (texts sorted, so both orders share it); ``None`` for identical texts."""
    if text_a == text_b:
        return None
    return (key, text_a, text_b) if text_a < text_b else (key, text_b, text_a)


def _probability(cache: dict[tuple, float], key: str | tuple, text_a: str, text_b: str) -> float:
    """P(text_a beats text_b) from the cache: 0.5 for identical texts, 1 - p for the reversed order."""
    pair = _pair_key(key, text_a, text_b)
    if pair is None:
        return 0.5
    p = cache[pair]
    return p if pair[1] == text_a else 1.0 - p


def _margin(played: dict[Match, float], best: int, worst: int | None) -> float | None:
    """P(best beats worst) if those two met in a match, else ``None``."""
    if worst is None:
        return None
    if (best, worst) in played:
        return played[(best, worst)]
    if (worst, best) in played:
        return 1.0 - played[(worst, best)]
    return None


def check_probabilities(judge: object, probs: Sequence[float], expected: int) -> list[float]:
    """``probs`` as floats; raises ``ValueError`` naming the judge's class unless ``judge.compare`` returned
    ``expected`` real numbers in [0, 1] (a string such as "0.7", a bool, NaN or 1.3 is a broken judge)."""
    name = f"{type(judge).__name__}.compare"
    if isinstance(probs, (str, bytes)) or not hasattr(probs, "__len__"):
        raise ValueError(f"`{name}` must return a list of probabilities, got {type(probs).__name__}")
    if len(probs) != expected:
        raise ValueError(f"`{name}` returned {len(probs)} probabilities for {expected} rows")
    out: list[float] = []
    for row, p in enumerate(probs):
        if isinstance(p, (str, bytes, bool)) or not isinstance(p, numbers.Real):
            raise ValueError(f"`{name}` returned {p!r} ({type(p).__name__}) for row {row}; expected a float in [0, 1]")
        value = float(p)
        if not 0.0 <= value <= 1.0:  # NaN fails this too
            raise ValueError(f"`{name}` returned {value} for row {row}; expected a probability in [0, 1]")
        out.append(value)
    return out


def check_scores(judge: object, scores: Sequence[float], expected: int) -> list[float]:
    """``scores`` as floats; raises ``ValueError`` naming the judge's class unless ``judge.score_responses``
    returned ``expected`` finite real numbers (a string, a bool, NaN or inf is a broken judge)."""
    name = f"{type(judge).__name__}.score_responses"
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise ValueError(f"`{name}` must return a list of scores, got {type(scores).__name__}")
    if len(scores) != expected:
        raise ValueError(f"`{name}` returned {len(scores)} scores for {expected} responses")
    out: list[float] = []
    for row, score in enumerate(scores):
        if isinstance(score, (str, bytes, bool)) or not isinstance(score, numbers.Real):
            raise ValueError(f"`{name}` returned {score!r} ({type(score).__name__}) for row {row}; expected a float")
        if not math.isfinite(float(score)):
            raise ValueError(f"`{name}` returned {float(score)} for row {row}; expected a finite score")
        out.append(float(score))
    return out


def _validate(prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown ranking method {method!r}; valid methods: {', '.join(METHODS)}")
    for name, value in (("prompts", prompts), ("candidates", candidates)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"`{name}` must be a list, got {type(value).__name__}")
    if len(prompts) != len(candidates):
        raise ValueError(
            f"`prompts` and `candidates` must have the same length, got {len(prompts)} prompts and "
            f"{len(candidates)} candidate lists"
        )
    for i, prompt in enumerate(prompts):
        validate_prompt(prompt, f"prompts[{i}]")
    for i, texts in enumerate(candidates):
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"`candidates[{i}]` must be a list of strings, got {type(texts).__name__}")
        for j, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"`candidates[{i}][{j}]` must be a string, got {type(text).__name__}")
