"""A pair judge as a TRL reward function: ``reward_funcs=[PairwiseRewardFunction(judge)]``.

TRL calls a reward function with ``prompts=..., completions=..., completion_ids=..., **kwargs`` (one prompt per
completion) and expects one float per completion. A pair judge only says which of two responses is better, so the
reward of a completion is relative to the other completions of the same prompt. How they are laid out depends on
the trainer (TRL 1.16):

- ``OnlineDPOTrainer`` (``trl.experimental.online_dpo``) calls it per process with ``2 * prompts`` and the
  completions as [first of every prompt..., second of every prompt...] (layout ``"pairs"``); completion ``i`` is
  paired with completion ``i + N``. Reward: P(this completion beats the other one), both orders judged, so the two
  rewards of a pair sum to 1.
- ``GRPOTrainer`` / ``RLOOTrainer`` call it per process with consecutive groups of ``num_generations``
  completions of one prompt (layout ``"groups"``); a group can be split across processes (when
  ``per_device_train_batch_size * steps_per_generation`` is not a multiple of ``num_generations``). Reward: the
  completion's score within its whole group, see ``method``.

The judge is used only through ``judge.compare(prompts, responses_a, responses_b)`` via
:func:`rlhf_pairs.rank_candidates`, one batched call per tournament round over all groups of the call.

With a pairwise reward the mean reward is 0.5 by construction (GRPO's ``rewards/<name>/mean``, OnlineDPO's
``objective/scores``, and ``objective/rlhf_reward`` up to the KL term), so each call also logs what the judge said
(see :meth:`PairwiseRewardFunction.metrics`): ``rewards/<name>/decisiveness`` and
``rewards/<name>/clear_winner_rate``, through TRL's hooks: GRPO/RLOO's ``log_metric`` keyword (averaged per logging
step), or for OnlineDPO, which passes reward functions no logging hook, its ``trainer.stats`` once
:meth:`PairwiseRewardFunction.log_metrics_to` connected them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_pairs.data_utils import SYSTEM_MESSAGE_MODES, Prompt, completion_text, prepare_prompt, prompt_key
from rlhf_pairs.judges.trl_adapter import as_judge
from rlhf_pairs.ranking import METHODS, RankingResult, SupportsCompare, check_probabilities, rank_candidates

if TYPE_CHECKING:
    from accelerate import PartialState
    from transformers import Trainer

LAYOUTS = ("auto", "pairs", "groups")
# Keyword arguments that GRPOTrainer and RLOOTrainer pass to reward functions and OnlineDPOTrainer does not (TRL 1.16).
GROUP_TRAINER_KWARGS = ("log_metric", "log_extra")


@dataclass
class JudgeStats:
    """What the judge said in one reward call, summable over calls and processes.

    Attributes:
        abs_margin_sum: sum of |P - 0.5| over the comparisons the judge made (distinct pairs of different texts).
        comparisons: how many comparisons that is.
        clear_winners: groups (OnlineDPO: pairs) with a clear winner, see :meth:`PairwiseRewardFunction.metrics`.
        groups: groups (pairs) rewarded.
    """

    abs_margin_sum: float = 0.0
    comparisons: int = 0
    clear_winners: int = 0
    groups: int = 0

    def __add__(self, other: JudgeStats) -> JudgeStats:
        return JudgeStats(
            self.abs_margin_sum + other.abs_margin_sum,
            self.comparisons + other.comparisons,
            self.clear_winners + other.clear_winners,
            self.groups + other.groups,
        )


class _RecordingJudge:
    """Passes ``compare`` through to ``judge`` and keeps every answer: (prompt key, a, b) -> P(a beats b)."""

    def __init__(self, judge: SupportsCompare) -> None:
        self.judge = judge
        self.probabilities: dict[tuple, float] = {}

    def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        # Checked here so that a broken judge is named by its own class, not this wrapper's.
        probs = check_probabilities(self.judge, self.judge.compare(prompts, responses_a, responses_b), len(prompts))
        for prompt, a, b, p in zip(prompts, responses_a, responses_b, probs):
            self.probabilities[(prompt_key(prompt), a, b)] = p
        return probs

    def probability(self, key: str | tuple, a: str, b: str) -> float | None:
        """P(a beats b) if the judge compared them (in either order) for the prompt ``key``, else ``None``."""
        if (key, a, b) in self.probabilities:
            return self.probabilities[(key, a, b)]
        if (key, b, a) in self.probabilities:
            return 1.0 - self.probabilities[(key, b, a)]
        return None


class PairwiseRewardFunction:
    """A pairwise judge as a TRL reward function: one float per completion, relative to the completions of the
    same prompt.

    A plain callable, not an ``nn.Module`` (TRL runs any module reward as a sequence classifier); TRL logs it under
    ``__name__`` (``rewards/<name>/mean``).

    Args:
        judge: anything with ``compare(prompts, responses_a, responses_b) -> list[float]`` (P(a is better than b)),
            e.g. a :class:`~rlhf_pairs.PairwiseJudge`.
        layout: how completions are grouped by prompt:

            - ``"pairs"`` (``OnlineDPOTrainer``): N prompts repeated twice, completion ``i`` against ``i + N``;
              reward = P(this completion beats the other). ``method`` is not used: a pair needs one comparison.
            - ``"groups"`` (``GRPOTrainer``, ``RLOOTrainer``): consecutive completions of one prompt form a group;
              reward = the completion's ``method`` score within the group.
            - ``"auto"`` (default): ``"groups"`` when the trainer passes GRPO/RLOO's ``log_metric`` keyword;
              otherwise from the prompt pattern: ``"pairs"`` if ``prompts[i] == prompts[i + N]`` for all i,
              ``"groups"`` if every run of equal consecutive prompts has 2+ completions. When both patterns fit
              (e.g. four copies of one prompt), the layout of an earlier call of this object is reused; with
              none, it raises ``ValueError`` asking for an explicit ``layout`` (two copies of one prompt are a
              pair under either reading and count as ``"pairs"``).
        method: group scoring, ``"round_robin"`` (default) or ``"knockout"``:

            - round robin: all n(n-1)/2 pairs judged; reward = mean P(this completion beats another of its group),
              in [0, 1]. The exact, graded signal; n(n-1)/2 comparisons per group.
            - knockout: :func:`rank_candidates`'s bracket, ceil(3n/2) - 2 comparisons per group; it orders only
              the extremes, so reward = 1.0 for the group's best, 0.0 for its worst, 0.5 for every other
              completion (GRPO's group normalisation turns this into a push towards the best and away from the
              worst).
        num_generations: group size in the ``"groups"`` layout. ``None`` (default): a group is a run of
            consecutive equal prompts (this also covers GRPO's ``num_generations_eval``). An int: blocks of exactly
            that many completions, each block's prompts checked to be equal.
        seed: knockout bracket seed; rewards depend only on (group, seed).
        system_message: leading system messages of conversational prompts, for the judge: ``"merge"`` (into the
            first user turn), ``"drop"`` or ``"error"``. What the judge reads of a prompt follows
            :func:`~rlhf_pairs.data_utils.prepare_prompt`, the rule of every job (a chat string already rendered
            with a recognised template is read as its messages, as ``rank`` reads it).
        name: the ``__name__`` TRL logs the reward under.
        clear_win_probability: the P a group's best completion must reach against each completion it was compared
            with to count as a clear winner (``rewards/<name>/clear_winner_rate``); default 0.75.

    The judge can also be written for TRL's former judge API (only ``judge(prompts, completions,
    shuffle_order=True)``): it is wrapped in a :class:`~rlhf_pairs.TRLJudgeAdapter` (:func:`~rlhf_pairs.as_judge`).

    Multi-process training: a ``"groups"`` call under ``torch.distributed`` with 2+ processes (started by
    ``accelerate launch`` or ``torchrun``) first gathers every process's prompts and completions (with accelerate's
    ``gather_object``), so that a group split across processes is ranked whole (never half a group); each group is
    ranked by one process (group index modulo the number of processes) and the rewards are gathered back, so every
    process returns the rewards of its own completions. Every process must therefore call the function together,
    as TRL's trainers do. The ``"pairs"`` layout is process-local (OnlineDPO never splits a pair).

    Raises:
        ValueError: mismatched lengths, prompts that do not follow the layout (naming the offending index), a group
            of one completion, or an ambiguous ``"auto"`` layout.
    """

    def __init__(
        self,
        judge: SupportsCompare,
        *,
        layout: str = "auto",
        method: str = "round_robin",
        num_generations: int | None = None,
        seed: int = 0,
        system_message: str = "merge",
        name: str = "pairwise_judge",
        clear_win_probability: float = 0.75,
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {LAYOUTS}, got {layout!r}")
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
        if num_generations is not None and num_generations < 2:
            raise ValueError(f"`num_generations` must be >= 2 (a group needs two completions), got {num_generations}")
        if system_message not in SYSTEM_MESSAGE_MODES:
            raise ValueError(f"`system_message` must be one of {SYSTEM_MESSAGE_MODES}, got {system_message!r}")
        if not 0.5 < clear_win_probability <= 1.0:
            raise ValueError(f"`clear_win_probability` must be in (0.5, 1], got {clear_win_probability}")
        self.judge = as_judge(judge)
        self.clear_win_probability = clear_win_probability
        self.last_metrics: dict[str, float] = {}  # what the last call logged
        self._metric_sink: Callable[[str, float], None] | None = None  # set by log_metrics_to (OnlineDPO)
        self.layout = layout
        self.method = method
        self.num_generations = num_generations
        self.seed = seed
        self.system_message = system_message
        self.__name__ = name
        self._auto_layout: str | None = None  # the layout an unambiguous "auto" call found

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.layout!r}, method={self.method!r}, name={self.__name__!r})"

    def log_metrics_to(self, trainer: Trainer) -> None:
        """Log :meth:`metrics` into ``trainer``'s own per-step statistics when TRL gives the reward function no
        ``log_metric`` hook: ``OnlineDPOTrainer`` (``trl.experimental.online_dpo``) passes only ``trainer_state``,
        but averages and logs every list in its ``trainer.stats`` at each logging step (as its ``objective/*``).
        A trainer without ``stats`` (GRPO, RLOO: they pass ``log_metric``) is left alone."""
        if isinstance(getattr(trainer, "stats", None), dict):
            self._metric_sink = lambda name, value: trainer.stats.setdefault(name, []).append(value)

    def metrics(self, stats: JudgeStats) -> dict[str, float]:
        """The metrics a call logs, from its :class:`JudgeStats` (over all processes):

        - ``rewards/<name>/decisiveness``: mean |P - 0.5| over the comparisons the judge made (distinct pairs of
          different completions; P with both orders averaged): 0 for a judge that cannot tell completions apart,
          0.5 for a certain one. 0 when no comparison was needed (every group's completions were identical).
        - ``rewards/<name>/clear_winner_rate``: share of groups (OnlineDPO: pairs) whose best completion is unique
          in its group and beat every completion it was compared with (round robin: all others; knockout: its
          matches) with P >= ``clear_win_probability``.
        """
        prefix = f"rewards/{self.__name__}"
        return {
            f"{prefix}/decisiveness": stats.abs_margin_sum / stats.comparisons if stats.comparisons else 0.0,
            f"{prefix}/clear_winner_rate": stats.clear_winners / stats.groups if stats.groups else 0.0,
        }

    def __call__(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str | Sequence[dict]],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Rewards for TRL's call: one float per completion, in [0, 1]. ``completion_ids`` and the other
        keyword arguments TRL passes (dataset columns, ``trainer_state``, ...) are accepted and ignored."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"`prompts` and `completions` must have the same length, got {len(prompts)} and {len(completions)}"
            )
        if not prompts:
            return []
        judge_prompts = [prepare_prompt(p, self.system_message, f"prompts[{i}]")[1] for i, p in enumerate(prompts)]
        texts = [completion_text(c) for c in completions]
        layout = self._resolve_layout([prompt_key(p) for p in judge_prompts], kwargs)
        log_metric = kwargs.get("log_metric") or self._metric_sink
        state = _process_state()
        if layout == "pairs":
            rewards, stats = self._pair_rewards(judge_prompts, texts)
            if log_metric is not None and state is not None and state.num_processes > 1:
                from accelerate.utils import gather_object

                stats = sum(gather_object([stats]), JudgeStats())  # every process logs the same global numbers
        elif state is None or state.num_processes == 1:
            rewards, stats = self._group_rewards(judge_prompts, texts, owned=lambda g: True)  # type: ignore[assignment]  # all owned: no None
        else:
            rewards, stats = self._distributed_group_rewards(judge_prompts, texts, state)
        self.last_metrics = self.metrics(stats)
        if log_metric is not None:
            for name, value in self.last_metrics.items():
                log_metric(name, value)
        return rewards

    def _distributed_group_rewards(
        self, prompts: list[Prompt], texts: list[str], state: PartialState
    ) -> tuple[list[float], JudgeStats]:
        """Gather everything, rank the groups this process owns, gather the rewards (and judge statistics) back and
        keep the local slice."""
        from accelerate.utils import gather_object

        world_size, rank = state.num_processes, state.process_index
        parts = gather_object([(prompts, texts)])  # one (prompts, texts) per process, in rank order
        offset = sum(len(part[1]) for part in parts[:rank])
        all_prompts = [p for part in parts for p in part[0]]
        all_texts = [t for part in parts for t in part[1]]
        mine, stats = self._group_rewards(all_prompts, all_texts, owned=lambda g: g % world_size == rank)
        merged: dict[int, float] = {}
        total = JudgeStats()
        for part, part_stats in gather_object([({i: r for i, r in enumerate(mine) if r is not None}, stats)]):
            merged.update(part)
            total += part_stats
        return [merged[i] for i in range(offset, offset + len(texts))], total

    def _resolve_layout(self, keys: list, kwargs: dict) -> str:
        if self.layout != "auto":
            return self.layout
        if any(k in kwargs for k in GROUP_TRAINER_KWARGS):
            return "groups"
        n = len(keys) // 2
        pairs = len(keys) % 2 == 0 and keys[:n] == keys[n:]
        groups = all(length >= 2 for _, length in _runs(keys))
        if pairs and groups and len(keys) > 2:
            if self._auto_layout is not None:
                return self._auto_layout
            raise ValueError(
                f"layout='auto' cannot tell pairs from groups: the {len(keys)} prompts fit both OnlineDPO's layout "
                f"(prompts[i] == prompts[i + {n}]) and GRPO's (runs of equal prompts); pass layout='pairs' for "
                f"OnlineDPOTrainer or layout='groups' for GRPOTrainer/RLOOTrainer"
            )
        if pairs:
            self._auto_layout = "pairs"
        elif groups:
            self._auto_layout = "groups"
        else:
            raise ValueError(
                "layout='auto' found neither OnlineDPO's layout (prompts[i] == prompts[i + N]) nor GRPO's "
                "(consecutive groups of 2+ equal prompts); pass layout='pairs' or layout='groups'"
            )
        return self._auto_layout

    def _pair_rewards(self, prompts: list[Prompt], texts: list[str]) -> tuple[list[float], JudgeStats]:
        """Completion i against i + N: P(i beats i + N) and its complement, in one ``compare`` call."""
        if len(texts) % 2:
            raise ValueError(
                f"layout='pairs' needs an even number of completions ([first of each prompt..., second of each "
                f"prompt...]), got {len(texts)}"
            )
        n = len(texts) // 2
        for i in range(n):
            if prompt_key(prompts[i]) != prompt_key(prompts[i + n]):
                raise ValueError(
                    f"layout='pairs' expects prompts[i] == prompts[i + {n}] (OnlineDPO passes 2 * prompts), but "
                    f"prompts[{i}] != prompts[{i + n}]: {prompts[i]!r:.60} vs {prompts[i + n]!r:.60}"
                )
        judge = _RecordingJudge(self.judge)
        pairs = [[texts[i], texts[i + n]] for i in range(n)]
        results = rank_candidates(judge, prompts[:n], pairs, method="round_robin")
        first = [result.scores[0] for result in results]  # type: ignore[index]  # round robin: scores
        stats = self._judge_stats(judge, prompts[:n], pairs, results)
        return first + [result.scores[1] for result in results], stats  # type: ignore[index]  # round robin: scores

    def _group_rewards(
        self, prompts: list[Prompt], texts: list[str], owned: Callable[[int], bool]
    ) -> tuple[list[float | None], JudgeStats]:
        """Rewards of the completions in the groups ``owned(group_index)`` selects (``None`` for the others), and
        the judge's statistics over those groups."""
        groups = self._groups([prompt_key(p) for p in prompts])
        mine = [g for g in range(len(groups)) if owned(g)]
        rewards: list[float | None] = [None] * len(texts)
        if not mine:
            return rewards, JudgeStats()
        judge = _RecordingJudge(self.judge)
        group_prompts = [prompts[groups[g][0]] for g in mine]
        group_texts = [[texts[i] for i in groups[g]] for g in mine]
        results = rank_candidates(judge, group_prompts, group_texts, method=self.method, seed=self.seed)
        for g, result in zip(mine, results):
            if self.method == "round_robin":
                scores = result.scores
            else:
                scores = [1.0 if j == result.best else 0.0 if j == result.worst else 0.5 for j in range(len(groups[g]))]
            for i, score in zip(groups[g], scores):  # type: ignore[arg-type]  # round robin: scores
                rewards[i] = float(score)
        return rewards, self._judge_stats(judge, group_prompts, group_texts, results)

    def _judge_stats(
        self,
        judge: _RecordingJudge,
        prompts: list[Prompt],
        candidates: list[list[str]],
        results: list[RankingResult],
    ) -> JudgeStats:
        """:class:`JudgeStats` of one ``rank_candidates`` call through ``judge`` (see :meth:`metrics`)."""
        probabilities = judge.probabilities.values()
        clear = 0
        for prompt, texts, result in zip(prompts, candidates, results):
            best = texts[result.best]  # type: ignore[index]  # groups of 2+: never skipped
            if texts.count(best) > 1:  # an identical twin is as good: no unique winner
                continue
            key = prompt_key(prompt)
            wins = [judge.probability(key, best, other) for other in set(texts) - {best}]
            wins = [p for p in wins if p is not None]  # knockout: only the matches the best played
            clear += bool(wins) and min(wins) >= self.clear_win_probability  # type: ignore[type-var, operator]  # None dropped
        return JudgeStats(
            abs_margin_sum=sum(abs(p - 0.5) for p in probabilities),
            comparisons=len(probabilities),
            clear_winners=clear,
            groups=len(results),
        )

    def _groups(self, keys: list) -> list[list[int]]:
        """Indices of each group: blocks of ``num_generations``, or runs of equal consecutive prompts."""
        if self.num_generations is None:
            groups, start = [], 0
            for _, length in _runs(keys):
                if length < 2:
                    raise ValueError(
                        f"layout='groups': completion {start} is the only one of its prompt in a run of equal "
                        f"prompts; a group needs 2+ consecutive completions of one prompt (GRPO/RLOO's "
                        f"num_generations >= 2)"
                    )
                groups.append(list(range(start, start + length)))
                start += length
            return groups
        size = self.num_generations
        if len(keys) % size:
            raise ValueError(
                f"layout='groups' with num_generations={size} got {len(keys)} completions, not a multiple of "
                f"{size}: set num_generations to the trainer's (or num_generations_eval during evaluation), or "
                f"num_generations=None to group runs of equal prompts"
            )
        for start in range(0, len(keys), size):
            for i in range(start + 1, start + size):
                if keys[i] != keys[start]:
                    raise ValueError(
                        f"layout='groups' with num_generations={size}: completion {i} has another prompt than "
                        f"completion {start}, the first of its group; the trainer's num_generations must match"
                    )
        return [list(range(start, start + size)) for start in range(0, len(keys), size)]


def _runs(keys: list) -> list[tuple[Any, int]]:
    """(key, length) of each run of equal consecutive keys."""
    runs: list[tuple[Any, int]] = []
    for key in keys:
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1] + 1)
        else:
            runs.append((key, 1))
    return runs


def _process_state() -> PartialState | None:
    """accelerate's ``PartialState`` when a ``torch.distributed`` process group is initialised, else ``None``.

    ``accelerate.utils.gather_object`` gathers through the shared ``PartialState`` (a bare ``PartialState()``),
    which must therefore already describe the process group. A trainer's ``Accelerator`` or
    :func:`rlhf_pairs.utils.distributed.process_state` normally created it; if neither did, it is created here by
    ``process_state()``, with the package's arguments (a bare ``PartialState()`` created first would fix the shared
    state with others). Raises ``RuntimeError`` when the state does not match the process group (e.g. a group
    initialised by hand, without the launcher's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    from accelerate import PartialState

    if PartialState._shared_state == {}:  # not created yet
        from rlhf_pairs.utils.distributed import process_state

        state = process_state()
    else:
        state = PartialState()
    if (state.num_processes, state.process_index) != (dist.get_world_size(), dist.get_rank()):
        raise RuntimeError(
            f"accelerate's PartialState (process {state.process_index} of {state.num_processes}) does not match the "
            f"torch.distributed process group (rank {dist.get_rank()} of {dist.get_world_size()}); start the "
            f"processes with `accelerate launch` or `torchrun`, which set RANK, WORLD_SIZE and LOCAL_RANK"
        )
    return state
