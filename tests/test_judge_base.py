"""The PairwiseJudge contract: compare/judge built on one primitive, caching, and input validation."""

import pytest
import torch

from rlhf_pairs import PairwiseJudge


class LengthJudge(PairwiseJudge):
    """P(first better) = sigmoid(len(first) - len(second)) plus a position bias of +0.1 logit for the first."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def score_ordered_pairs(self, prompts, first, second):
        self.calls.append(len(prompts))
        diff = torch.tensor([len(a) - len(b) for a, b in zip(first, second)], dtype=torch.float64)
        return torch.sigmoid(diff + 0.1)


def test_compare_averages_both_orders_in_one_call():
    judge = LengthJudge()
    probs = judge.compare(["p", "q"], ["aaa", "a"], ["a", "aaa"])
    s = torch.sigmoid
    expected = [
        (s(torch.tensor(2.1, dtype=torch.float64)) + 1 - s(torch.tensor(-1.9, dtype=torch.float64))) / 2,
        (s(torch.tensor(-1.9, dtype=torch.float64)) + 1 - s(torch.tensor(2.1, dtype=torch.float64))) / 2,
    ]
    assert probs == pytest.approx([float(e) for e in expected], abs=1e-12)
    assert judge.calls == [4]  # both orders of both rows, one batched call
    assert probs[0] + probs[1] == pytest.approx(1.0)


def test_cache_scores_each_ordered_pair_once():
    judge = LengthJudge()
    judge.compare(["p"] * 3, ["x", "x", "yy"], ["yy", "yy", "x"])  # (x,yy) and (yy,x) only
    assert judge.num_scored_pairs == 2
    judge.compare(["p"], ["x"], ["yy"])
    assert judge.num_scored_pairs == 2 and judge.calls == [2]
    judge.compare(["other prompt"], ["x"], ["yy"])
    assert judge.num_scored_pairs == 4


def test_cache_can_be_disabled_and_is_bounded():
    judge = LengthJudge(cache_size=0)
    judge.compare(["p"], ["x"], ["yy"])
    judge.compare(["p"], ["x"], ["yy"])
    assert judge.num_scored_pairs == 4
    judge = LengthJudge(cache_size=3)
    judge.compare(["p", "q"], ["x", "x"], ["yy", "yy"])
    assert len(judge._cache) == 3


def test_judge_returns_index_of_better_and_scores():
    judge = LengthJudge()
    prompts = ["p", "q", "r"]
    completions = [["long answer", "s"], ["s", "long answer"], ["same", "same"]]
    for shuffle in (False, True):
        assert judge.judge(prompts, completions, shuffle_order=shuffle) == [0, 1, 0]  # a tie picks the first
        scores = judge.judge(prompts, completions, shuffle_order=shuffle, return_scores=True)
        assert scores == pytest.approx(judge.compare(prompts, [c[0] for c in completions], [c[1] for c in completions]))
    assert scores[2] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "args, message",
    [
        ((["p"], ["a", "b"], ["c"]), "same length"),
        (([], [], []), "at least one"),
        (("p", ["a"], ["b"]), "must be a list"),
        ((["p"], [None], ["b"]), r"responses_a\[0\]"),
        (([[]], ["a"], ["b"]), "non-empty list"),
        (([[{"role": "user", "content": "u"}, {"role": "user", "content": "v"}]], ["a"], ["b"]), "alternate"),
        (
            ([[{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]], ["a"], ["b"]),
            "end with a user",
        ),
        (([[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]], ["a"], ["b"]), "system"),
        (([[{"role": "user"}]], ["a"], ["b"]), "'role' and 'content'"),
    ],
)
def test_bad_input_raises_value_error_naming_it(args, message):
    with pytest.raises(ValueError, match=message):
        LengthJudge().compare(*args)


def test_judge_rejects_malformed_completions():
    with pytest.raises(ValueError, match=r"completions\[0\]"):
        LengthJudge().judge(["p"], [["only one"]])
    with pytest.raises(ValueError, match="same length"):
        LengthJudge().judge(["p", "q"], [["a", "b"]])


def test_score_both_orders_is_both_ordered_calls_in_one():
    judge = LengthJudge()
    prompts, a, b = ["p", "q", "r"], ["aaa", "a", "bb"], ["a", "aaa", "bc"]
    forward, backward = judge.score_both_orders(prompts, a, b)
    assert judge.calls == [6] and judge.num_scored_pairs == 0  # one batched call for both orders, not cached
    assert torch.equal(forward, judge.score_ordered_pairs(prompts, a, b))
    assert torch.equal(backward, judge.score_ordered_pairs(prompts, b, a))
    assert judge.combine_orders(forward, backward).tolist() == judge.compare(prompts, a, b)


class TemperatureJudge(PairwiseJudge):
    """Scores that depend on the judge's temperature: P(first better) = sigmoid((len(first) - len(second)) / T)."""

    def __init__(self, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature

    def score_ordered_pairs(self, prompts, first, second):
        diff = torch.tensor([len(a) - len(b) for a, b in zip(first, second)], dtype=torch.float64)
        return torch.sigmoid(diff / self.temperature)


def test_judge_temperature_rescores_at_that_temperature_and_restores_the_judge():
    judge = TemperatureJudge()
    prompts, completions = ["p", "q"], [["aaa", "a"], ["b", "bbbb"]]
    cached = judge.judge(prompts, completions, shuffle_order=False, return_scores=True)
    at_three = judge.judge(prompts, completions, shuffle_order=False, return_scores=True, temperature=3.0)
    assert at_three == pytest.approx(TemperatureJudge(temperature=3.0).compare(prompts, ["aaa", "b"], ["a", "bbbb"]))
    assert at_three != pytest.approx(cached)
    assert judge.temperature == 1.0 and judge.num_scored_pairs == 4  # the temperature call bypassed the cache
    assert judge.judge(prompts, completions, shuffle_order=False, return_scores=True) == cached
    assert judge.judge(prompts, completions, temperature=3.0) == [0, 1]
    with pytest.raises(ValueError, match="temperature"):
        judge.judge(prompts, completions, temperature=-1.0)
