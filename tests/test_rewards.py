"""PairwiseRewardFunction on TRL's layouts, with an oracle judge (no model): pairing, group scores, conversational
input, auto layout, errors, and groups split across two real processes."""

import math
import multiprocessing
import socket

import pytest

from rlhf_pairs.data_utils import completion_text, judge_prompt
from rlhf_pairs.rewards import PairwiseRewardFunction


class LengthJudge:
    """P(a beats b) = sigmoid(len(a) - len(b)) (transitive); records every call."""

    def __init__(self):
        self.calls = []

    def compare(self, prompts, responses_a, responses_b):
        self.calls.append((list(prompts), list(responses_a), list(responses_b)))
        return [1 / (1 + math.exp(len(b) - len(a))) for a, b in zip(responses_a, responses_b)]


def p(a: str, b: str) -> float:
    return 1 / (1 + math.exp(len(b) - len(a)))


def test_pairs_layout_rewards_are_p_of_beating_the_other_completion():
    judge = LengthJudge()
    reward = PairwiseRewardFunction(judge, layout="pairs")
    prompts = ["q1", "q2", "q3"]
    first, second = ["a", "bbbb", "cc"], ["aaa", "b", "cc"]
    rewards = reward(prompts=2 * prompts, completions=first + second, completion_ids=[[0]] * 6, trainer_state=None)
    assert rewards == pytest.approx([p("a", "aaa"), p("bbbb", "b"), 0.5, p("aaa", "a"), p("b", "bbbb"), 0.5])
    assert len(judge.calls) == 1  # one batched call; identical texts tie without the judge
    assert sorted(judge.calls[0][0]) == ["q1", "q2"]
    assert reward.__name__ == "pairwise_judge"


def test_groups_round_robin_and_knockout_scores():
    prompts = ["x"] * 3 + ["y"] * 4
    completions = ["aa", "a", "aaaa", "b", "bbb", "bb", "bbbbb"]
    rr = PairwiseRewardFunction(LengthJudge(), layout="groups")(prompts=prompts, completions=completions)
    expected = []
    for group in (completions[:3], completions[3:]):
        for c in group:
            expected.append(sum(p(c, o) for o in group if o is not c) / (len(group) - 1))
    assert rr == pytest.approx(expected)
    ko = PairwiseRewardFunction(LengthJudge(), layout="groups", method="knockout", num_generations=None)
    assert ko(prompts=prompts, completions=completions) == [0.5, 0.0, 1.0, 0.0, 0.5, 0.5, 1.0]


def test_conversational_prompts_and_completions():
    judge = LengthJudge()
    system = {"role": "system", "content": "Answer briefly."}
    prompt = [system, {"role": "user", "content": "hi"}]
    completions = [[{"role": "assistant", "content": t}] for t in ("hello there", "yo")]
    rewards = PairwiseRewardFunction(judge, layout="groups", num_generations=2)(
        prompts=[prompt, prompt], completions=completions
    )
    assert rewards == pytest.approx([p("hello there", "yo"), p("yo", "hello there")])
    assert judge.calls[0][0] == [[{"role": "user", "content": "Answer briefly.\n\nhi"}]]
    assert judge_prompt(prompt, "drop") == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="system message"):
        judge_prompt(prompt, "error")
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]
    assert (
        completion_text(parts + [{"role": "tool", "content": "42"}, {"role": "assistant", "content": "b"}]) == "a\n\nb"
    )


def test_auto_layout():
    judge = LengthJudge()
    reward = PairwiseRewardFunction(judge)
    # GRPO/RLOO pass log_metric: groups even when the prompts also fit the pairs pattern.
    grpo = reward(prompts=["q"] * 4, completions=["a", "aa", "aaa", "aaaa"], log_metric=lambda *a: None)
    assert grpo[3] > grpo[2] > grpo[1] > grpo[0]
    with pytest.raises(ValueError, match="cannot tell pairs from groups"):
        reward(prompts=["q"] * 4, completions=["a", "aa", "aaa", "aaaa"])
    assert reward(prompts=["q", "r", "q", "r"], completions=["a", "b", "aa", "b"])[0] == pytest.approx(p("a", "aa"))
    # Once a call was unambiguous, an ambiguous one reuses its layout: pairs (0, 2) and (1, 3).
    assert reward(prompts=["q"] * 4, completions=["a", "aa", "aaa", "aaaa"])[0] == pytest.approx(p("a", "aaa"))
    fresh = PairwiseRewardFunction(LengthJudge())
    assert fresh(prompts=["q", "q", "r", "r"], completions=["a", "aa", "b", "bb"])[0] == pytest.approx(p("a", "aa"))


def test_layout_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"prompts\[1\] != prompts\[3\]"):
        PairwiseRewardFunction(LengthJudge(), layout="pairs")(prompts=["q", "r", "q", "s"], completions=list("abcd"))
    with pytest.raises(ValueError, match="completion 2 is the only one"):
        PairwiseRewardFunction(LengthJudge(), layout="groups")(prompts=["q", "q", "r"], completions=list("abc"))
    with pytest.raises(ValueError, match="not a multiple of 3"):
        PairwiseRewardFunction(LengthJudge(), layout="groups", num_generations=3)(prompts=["q"] * 4, completions="abcd")
    with pytest.raises(ValueError, match="completion 2 has another prompt"):
        PairwiseRewardFunction(LengthJudge(), layout="groups", num_generations=3)(
            prompts=["q", "q", "r", "r", "r", "r"], completions=list("abcdef")
        )
    with pytest.raises(ValueError, match="layout"):
        PairwiseRewardFunction(LengthJudge(), layout="grpo")


class MetricLog:
    """GRPO's ``log_metric`` keyword: records (name, value) calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, name, value):
        self.calls.append((name, value))

    def as_dict(self):
        assert len({name for name, _ in self.calls}) == len(self.calls), "one value per metric per call"
        return dict(self.calls)


def test_groups_log_decisiveness_and_clear_winner_rate_through_log_metric():
    """The mean reward of a group is 0.5 by construction; what is logged instead says what the judge decided."""
    prompts = ["x"] * 3 + ["y"] * 3 + ["z"] * 2
    completions = ["a", "aaaa", "aaa", "bb", "bb", "b", "c", "c"]
    log = MetricLog()
    rewards = PairwiseRewardFunction(LengthJudge())(prompts=prompts, completions=completions, log_metric=log)
    assert sum(rewards[:3]) / 3 == pytest.approx(0.5)  # the flat curve
    # Distinct pairs judged: x: (a, aaaa), (a, aaa), (aaaa, aaa); y: (bb, b); z: none (identical texts).
    judged = [p("a", "aaaa"), p("a", "aaa"), p("aaaa", "aaa"), p("bb", "b")]
    # Clear winner (P >= 0.75 against every other): x: "aaaa" beats "aaa" with sigmoid(1) = 0.73 -> no;
    # y: the best "bb" has an identical twin -> no; z: all identical -> no.
    assert log.as_dict() == pytest.approx(
        {
            "rewards/pairwise_judge/decisiveness": sum(abs(q - 0.5) for q in judged) / 4,
            "rewards/pairwise_judge/clear_winner_rate": 0.0,
        }
    )
    lenient = MetricLog()
    reward = PairwiseRewardFunction(LengthJudge(), clear_win_probability=0.7, name="judge")
    reward(prompts=prompts, completions=completions, log_metric=lenient)
    assert lenient.as_dict()["rewards/judge/clear_winner_rate"] == pytest.approx(1 / 3)
    assert reward.last_metrics == lenient.as_dict()
    with pytest.raises(ValueError, match="clear_win_probability"):
        PairwiseRewardFunction(LengthJudge(), clear_win_probability=0.5)


def test_knockout_clear_winner_counts_the_matches_the_best_played():
    log = MetricLog()
    judge = LengthJudge()
    reward = PairwiseRewardFunction(judge, layout="groups", method="knockout", clear_win_probability=0.85)
    reward(prompts=["x"] * 4, completions=["a", "aaaa", "aa", "aaaaaaa"], log_metric=log)
    rows = [(a, b) for call in judge.calls for _, a, b in zip(*call)]
    assert len(rows) == 4  # knockout: 3 winners' matches + 1 losers' match, not all 6 pairs
    best_matches = [p(a, b) if a == "aaaaaaa" else p(b, a) for a, b in rows if "aaaaaaa" in (a, b)]
    assert len(best_matches) == 2 and min(best_matches) >= 0.85  # so the best is a clear winner
    assert log.as_dict()["rewards/pairwise_judge/clear_winner_rate"] == 1.0
    assert log.as_dict()["rewards/pairwise_judge/decisiveness"] == pytest.approx(
        sum(abs(p(a, b) - 0.5) for a, b in rows) / 4
    )


def test_pairs_metrics_reach_online_dpo_stats_through_log_metrics_to():
    """OnlineDPOTrainer passes reward functions no logging hook; log_metrics_to puts the metrics in its ``stats``,
    which it averages and logs at each logging step."""

    class OnlineDPOLike:
        def __init__(self):
            self.stats = {"objective/scores": []}

    trainer = OnlineDPOLike()
    reward = PairwiseRewardFunction(LengthJudge(), layout="pairs")
    reward.log_metrics_to(trainer)
    rewards = reward(prompts=["q", "r", "s", "q", "r", "s"], completions=["a", "bbbb", "cc", "aaa", "b", "cc"])
    pair_probs = rewards[:3]
    assert trainer.stats["rewards/pairwise_judge/decisiveness"] == pytest.approx(
        [(abs(pair_probs[0] - 0.5) + abs(pair_probs[1] - 0.5)) / 2]  # the identical pair is not a comparison
    )
    # P("bbbb" beats "b") = sigmoid(3) = 0.95: a clear winner; sigmoid(2) = 0.88 for "aaa": also; "cc" vs "cc": no.
    assert trainer.stats["rewards/pairwise_judge/clear_winner_rate"] == pytest.approx([2 / 3])
    trainer.stats = {key: [] for key in trainer.stats}  # what OnlineDPO does after logging
    reward(prompts=["q", "q"], completions=["c", "c"])
    assert trainer.stats["rewards/pairwise_judge/decisiveness"] == [0.0]  # nothing to decide
    reward.log_metrics_to(object())  # a trainer without stats (GRPO passes log_metric): nothing to connect


# Two processes, each with half of a batch of three groups of two: the middle group is split across them.
SPLIT_PROMPTS = ["x", "x", "y", "y", "z", "z"]
SPLIT_COMPLETIONS = ["aaa", "a", "bb", "bbbb", "c", "cc"]


def _split_group_worker(rank: int, port: int, queue) -> None:
    import os

    import torch.distributed as dist

    # The environment `torchrun` / `accelerate launch` set: accelerate's state (whose gather the reward uses) reads it.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1")  # gloo, also with GPUs
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        judge = LengthJudge()
        reward = PairwiseRewardFunction(judge, layout="groups")
        local = slice(3 * rank, 3 * rank + 3)
        log = MetricLog()
        rewards = reward(prompts=SPLIT_PROMPTS[local], completions=SPLIT_COMPLETIONS[local], log_metric=log)
        queue.put((rank, rewards, [row for call in judge.calls for row in zip(*call)], log.as_dict()))
    finally:
        dist.destroy_process_group()


def test_groups_split_across_processes_are_ranked_whole():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_split_group_worker, args=(rank, port, queue)) for rank in range(2)]
    for w in workers:
        w.start()
    results = dict(
        (rank, (rewards, rows, logged)) for rank, rewards, rows, logged in (queue.get(timeout=60) for _ in workers)
    )
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    one_process = MetricLog()
    expected = PairwiseRewardFunction(LengthJudge(), layout="groups")(
        prompts=SPLIT_PROMPTS, completions=SPLIT_COMPLETIONS, log_metric=one_process
    )
    # Each process judged its own groups; both log the metrics of the whole batch (GRPO averages them).
    assert results[0][2] == results[1][2] == pytest.approx(one_process.as_dict())
    assert results[0][0] + results[1][0] == pytest.approx(expected)
    assert expected[2] == pytest.approx(p("bb", "bbbb"))  # the split group, judged as one pair
    # Each group is judged once, by one process (groups 0 and 2 on rank 0, group 1 on rank 1).
    judged = sorted(row[0] for rank in (0, 1) for row in results[rank][1])
    assert judged == ["x", "y", "z"]
