"""The pairwise judge contract: one batched primitive, everything else inherited."""

from __future__ import annotations

import os
import random
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from rlhf_pairs.data_utils import Prompt, prompt_key, validate_prompt
from rlhf_pairs.ranking import check_scores
from rlhf_pairs.tokenization import resolve_device_and_dtype
from rlhf_pairs.utils.verbosity import show_progress_bars

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def check_pair_inputs(prompts: Sequence, responses_a: Sequence, responses_b: Sequence) -> None:
    """Raise ``ValueError`` naming the problem when the three inputs of ``compare`` do not line up."""
    for name, value in (("prompts", prompts), ("responses_a", responses_a), ("responses_b", responses_b)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"`{name}` must be a list, got {type(value).__name__}")
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise ValueError(
            f"`prompts`, `responses_a` and `responses_b` must have the same length, got "
            f"{len(prompts)}, {len(responses_a)} and {len(responses_b)}"
        )
    if not prompts:
        raise ValueError("`prompts`, `responses_a` and `responses_b` are empty: compare needs at least one pair")
    for name, responses in (("responses_a", responses_a), ("responses_b", responses_b)):
        for i, response in enumerate(responses):
            if not isinstance(response, str):
                raise ValueError(f"`{name}[{i}]` must be a string, got {type(response).__name__}")
    for i, prompt in enumerate(prompts):
        validate_prompt(prompt, f"prompts[{i}]")


def is_main_process() -> bool:
    """True on the process that should show progress: accelerate's local main process (local rank 0 under
    ``accelerate launch`` / ``torchrun``, or the only process without a launcher)."""
    from accelerate import PartialState

    # PartialState is a shared-state singleton whose first construction fixes its arguments (and may initialise a
    # process group and pick a device): rlhf_pairs.utils.distributed.process_state() creates it with cpu=True on
    # machines without a GPU, a trainer's Accelerator with its own arguments. So a bare PartialState() is only
    # constructed once someone has created the state (it then just shares it); before that, the launcher's
    # LOCAL_RANK says the same thing without side effects.
    if PartialState._shared_state != {}:  # accelerate's own PartialState.initialized test, without an instance
        return PartialState().is_local_main_process
    return os.environ.get("LOCAL_RANK", "0") == "0"


def progress_bar(batches: list, show: bool | None, desc: str) -> tqdm:
    """``batches`` wrapped in a tqdm bar; ``show=None`` shows it on the main process for calls of 8+ batches."""
    if show is None:
        show = len(batches) >= 8 and is_main_process() and show_progress_bars()
    return tqdm(batches, desc=desc, unit="batch", disable=not show, leave=False)


def load_model_and_tokenizer(
    auto_class: Any,
    name_or_path: str,
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype,
    attn_implementation: str | None,
    tokenizer_name_or_path: str | None,
    revision: str | None,
    trust_remote_code: bool,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a judge checkpoint: ``auto_class.from_pretrained`` (e.g. ``AutoModelForCausalLM``) on
    ``device`` in ``dtype`` (``"auto"``: bf16 on CUDA, fp32 elsewhere, see
    :func:`~rlhf_pairs.tokenization.resolve_device_and_dtype`), and the tokenizer of ``tokenizer_name_or_path`` or
    the checkpoint. A checkpoint or tokenizer that does not load raises an error naming the input (``--judge``) and
    what to do (:func:`rlhf_pairs.utils.models.loading_input`)."""
    from transformers import AutoTokenizer

    from rlhf_pairs.utils.models import loading_input

    device, dtype = resolve_device_and_dtype(device, dtype)
    tokenizer_path = tokenizer_name_or_path or name_or_path
    with loading_input("--judge" if tokenizer_path == name_or_path else "the judge's tokenizer", tokenizer_path):
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_path, revision=revision, trust_remote_code=trust_remote_code
        )
    with loading_input("--judge", name_or_path):
        model = auto_class.from_pretrained(
            name_or_path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
    return model.to(device), tokenizer


def _score_both_orders(
    score: Callable[[list[Prompt], list[str], list[str]], torch.Tensor],
    prompts: Sequence[Prompt],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``score(prompts, first, second)`` over the interleaved rows (a, b), (b, a), split into (forward, backward).

    Shared by :meth:`PairwiseJudge.score_both_orders` (``score`` = the model) and :meth:`PairwiseJudge.compare`
    (``score`` = the cache in front of it).
    """
    scores = score(
        [p for p in prompts for _ in range(2)],
        [r for pair in zip(responses_a, responses_b) for r in pair],
        [r for pair in zip(responses_b, responses_a) for r in pair],
    ).view(-1, 2)
    return scores[:, 0], scores[:, 1]


class PairwiseJudge(ABC):
    """A model that reads a prompt and two responses and says which is better.

    A subclass implements :meth:`score_ordered_pairs`, scoring a batch of *ordered* pairs (first, second) in one
    call, and optionally :meth:`combine_orders`, which turns the scores of (a, b) and (b, a) into
    P(a is better than b). It inherits:

    - :meth:`compare`: P(a is better than b) for each row, both orders scored in one batched call and combined;
    - :meth:`score_both_orders`: the raw scores of (a, b) and (b, a) for each row, in one batched call (uncached);
    - :meth:`judge`: TRL's former ``BasePairwiseJudge`` contract (index of the better completion, or P(first));
    - a cache of ordered-pair scores, so no (prompt, first, second) is scored twice while it stays cached.

    Args:
        cache_size: how many ordered-pair scores to keep (least recently used are dropped); 0 disables caching.
    """

    def __init__(self, cache_size: int = 100_000):
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, float] = OrderedDict()
        self.num_scored_pairs = 0  # ordered pairs sent to the model (cache hits excluded)

    @abstractmethod
    def score_ordered_pairs(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> torch.Tensor:
        """Score ordered pairs in one batched call; returns a float tensor of shape (len(prompts),).

        The score of a row is whatever :meth:`combine_orders` expects: by default P(first is better).
        Inputs are already validated.
        """

    def combine_orders(self, forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        """P(a better than b) from the scores of (a, b) and (b, a): the mean of P_ab and 1 - P_ba."""
        return (forward + (1.0 - backward)) / 2

    def first_probability(self, scores: torch.Tensor) -> torch.Tensor:
        """P(first is better) from the scores of one order alone (position-bias metrics need it).

        By default the score itself: the contract of the default :meth:`combine_orders`. A judge whose scores are
        not probabilities overrides both.
        """
        return scores

    def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        """P(responses_a[i] is better than responses_b[i] for prompts[i]), both orders scored and combined.

        Prompts are strings or chat message lists (the conversation before the responses). Raises ``ValueError``
        for mismatched lengths, non-string responses or malformed conversations.
        """
        check_pair_inputs(prompts, responses_a, responses_b)
        forward, backward = self._cached_both_orders(prompts, responses_a, responses_b)
        return self.combine_orders(forward, backward).tolist()

    def compare_at_temperature(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str], temperature: float
    ) -> list[float]:
        """:meth:`compare` with the judge's ``temperature`` replaced by ``temperature`` for this call.

        For a judge whose scores depend on its ``temperature`` attribute (the pair LM's probabilities): both orders
        are scored again at that temperature, bypassing the cache. A judge whose cached scores do not depend on it
        (PairRM's logits) overrides this and uses the cache. Raises ``ValueError`` for a judge without a
        ``temperature`` attribute or a temperature <= 0.
        """
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        if not hasattr(self, "temperature"):
            raise ValueError(f"{type(self).__name__} has no `temperature`: judge(..., temperature=...) cannot apply")
        check_pair_inputs(prompts, responses_a, responses_b)
        own, self.temperature = self.temperature, temperature  # type: ignore[has-type]  # subclasses set it (hasattr above)
        try:
            forward, backward = self.score_both_orders(prompts, responses_a, responses_b)
            return self.combine_orders(forward, backward).tolist()
        finally:
            self.temperature = own

    def score_both_orders(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores of both orders of every pair: ``(forward, backward)``, the scores of (a, b) and of (b, a).

        One batched :meth:`score_ordered_pairs` call over the interleaved rows (a, b), (b, a), so both orders of a
        pair land in the same batch; each tensor has shape (len(prompts),) and the dtype and device the model
        returns. ``combine_orders(forward, backward)`` is then P(a is better than b), as :meth:`compare` computes it
        (``compare`` lays out the rows the same way but goes through the cache; this method does not use it).
        Inputs are not validated: call :func:`check_pair_inputs` first.
        """
        return _score_both_orders(self.score_ordered_pairs, prompts, responses_a, responses_b)

    def judge(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[Sequence[str]],
        shuffle_order: bool = True,
        return_scores: bool = False,
        temperature: float | None = None,
    ) -> list[int] | list[float]:
        """TRL's former ``BasePairwiseJudge.judge`` (and ``PairRMJudge.judge``, checked against TRL 0.19.0's
        ``trl/trainer/judges.py``): for each prompt and pair of completions, the index (0 or 1) of the better one,
        or with ``return_scores=True`` P(first completion is better).

        ``shuffle_order`` presents each pair in a random order to the model and maps the answer back; since
        :meth:`compare` already scores both orders it only changes float rounding. A tie (P exactly 0.5) returns 0.
        ``temperature``: as TRL's ``PairRMJudge.judge``, the temperature of this call's probabilities (for PairRM
        sigmoid((f(a, b) - f(b, a)) / temperature), exactly TRL's softmax of llm-blender's scores over it);
        ``None`` keeps the judge's own (see :meth:`compare_at_temperature`).
        """
        for i, pair in enumerate(completions):
            if isinstance(pair, str) or len(pair) != 2:
                raise ValueError(f"`completions[{i}]` must be a pair of two completions, got {pair!r:.80}")
        if len(prompts) != len(completions):
            raise ValueError(
                f"`prompts` and `completions` must have the same length, got {len(prompts)} and {len(completions)}"
            )
        flips = [random.random() < 0.5 if shuffle_order else False for _ in completions]
        first = [pair[1] if flip else pair[0] for pair, flip in zip(completions, flips)]
        second = [pair[0] if flip else pair[1] for pair, flip in zip(completions, flips)]
        if temperature is None:
            judged = self.compare(prompts, first, second)
        else:
            judged = self.compare_at_temperature(prompts, first, second, temperature)
        probs = [1.0 - p if flip else p for p, flip in zip(judged, flips)]
        if return_scores:
            return probs
        return [0 if p >= 0.5 else 1 for p in probs]  # TRL's judge() returns an index: a tie names the first

    def _cached_both_orders(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`score_both_orders`'s layout, through the cache (which ``score_both_orders`` itself bypasses)."""
        return _score_both_orders(self._cached_scores, prompts, responses_a, responses_b)

    def _cached_scores(self, prompts: list[Prompt], first: list[str], second: list[str]) -> torch.Tensor:
        """Scores of ordered pairs, each distinct (prompt, first, second) sent to the model at most once."""
        keys = [(prompt_key(p), a, b) for p, a, b in zip(prompts, first, second)]
        todo: dict[tuple, int] = {}
        for i, key in enumerate(keys):
            if key not in self._cache and key not in todo:
                todo[key] = i
        if todo:
            rows = list(todo.values())
            scores = self.score_ordered_pairs(
                [prompts[i] for i in rows], [first[i] for i in rows], [second[i] for i in rows]
            )
            self.num_scored_pairs += len(rows)
            fresh = dict(zip(todo, scores.detach().double().cpu().tolist()))
        else:
            fresh = {}
        values = [fresh[key] if key in fresh else self._cache[key] for key in keys]
        if self.cache_size > 0:
            for key in keys:
                if key in self._cache:
                    self._cache.move_to_end(key)
            self._cache.update(fresh)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return torch.tensor(values, dtype=torch.float64)

    def clear_cache(self) -> None:
        self._cache.clear()


def check_response_inputs(prompts: Sequence, responses: Sequence) -> None:
    """Raise ``ValueError`` naming the problem when the inputs of ``score_responses`` do not line up."""
    for name, value in (("prompts", prompts), ("responses", responses)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"`{name}` must be a list, got {type(value).__name__}")
    if len(prompts) != len(responses):
        raise ValueError(
            f"`prompts` and `responses` must have the same length, got {len(prompts)} and {len(responses)}"
        )
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise ValueError(f"`responses[{i}]` must be a string, got {type(response).__name__}")
    for i, prompt in enumerate(prompts):
        validate_prompt(prompt, f"prompts[{i}]")


class RewardJudge(PairwiseJudge):
    """A judge that scores every response on its own: a reward r(prompt, response), e.g. a Bradley-Terry reward model.

    P(a better than b) = sigmoid((r_a - r_b) / ``temperature``), the Bradley-Terry model the reward was trained
    under, so everything written for a pair judge (ranking, rewards, evaluation) works with it. A subclass implements
    :meth:`reward_batch`; it inherits:

    - :meth:`score_responses`: the rewards of (prompt, response) rows, each distinct row computed once while it stays
      in the cache (``num_scored_responses`` counts the rows sent to the model);
    - :meth:`compare`: the rewards of both responses of every pair (one :meth:`score_responses` call), combined;
    - the pair-judge contract (:meth:`score_ordered_pairs` returns r_first - r_second), so position metrics of an
      evaluation are exact: a reward model is order-invariant by construction.

    :func:`rlhf_pairs.ranking.rank_candidates` recognises a judge with ``score_responses`` and ranks n candidates by
    n rewards and a sort instead of a tournament.

    Args:
        temperature: divides the reward difference before the sigmoid (> 0).
        cache_size: how many rewards to keep (least recently used are dropped); 0 disables caching.
    """

    def __init__(self, temperature: float = 1.0, cache_size: int = 100_000):
        super().__init__(cache_size=cache_size)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        self.temperature = temperature
        self._rewards: OrderedDict[tuple, float] = OrderedDict()
        self.num_scored_responses = 0  # (prompt, response) rows sent to the model (cache hits excluded)

    @abstractmethod
    def reward_batch(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """The rewards of (prompt, response) rows in one batched call: a float tensor of shape (len(prompts),).
        Inputs are validated and distinct."""

    def score_responses(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """r(prompts[i], responses[i]) for every row (floats, through the cache). Raises ``ValueError`` for
        mismatched lengths, non-string responses or malformed prompts."""
        check_response_inputs(prompts, responses)
        keys = [(prompt_key(p), r) for p, r in zip(prompts, responses)]
        todo: dict[tuple, int] = {}
        for i, key in enumerate(keys):
            if key not in self._rewards and key not in todo:
                todo[key] = i
        fresh: dict[tuple, float] = {}
        if todo:
            rows = list(todo.values())
            rewards = self.reward_batch([prompts[i] for i in rows], [responses[i] for i in rows])
            self.num_scored_responses += len(rows)
            fresh = dict(zip(todo, check_scores(self, rewards.detach().double().cpu().tolist(), len(rows))))
        values = [fresh[key] if key in fresh else self._rewards[key] for key in keys]
        if self.cache_size > 0:
            for key in keys:
                if key in self._rewards:
                    self._rewards.move_to_end(key)
            self._rewards.update(fresh)
            while len(self._rewards) > self.cache_size:
                self._rewards.popitem(last=False)
        return values

    def preference(self, reward_difference: torch.Tensor) -> torch.Tensor:
        """P(a better than b) from r_a - r_b (float64): sigmoid(difference / temperature)."""
        return torch.sigmoid(reward_difference.double() / self.temperature)

    def preference_from_scores(self, differences: Sequence[float]) -> list[float]:
        """P(a better than b) for each r_a - r_b in ``differences``: what :meth:`compare` returns for rewards that
        differ by that much (ranking uses it for the margin, so it agrees with the scores it sorted)."""
        return self.preference(torch.tensor(list(differences), dtype=torch.float64)).tolist()

    def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        check_pair_inputs(prompts, responses_a, responses_b)
        n = len(prompts)
        rewards = torch.tensor(
            self.score_responses([*prompts, *prompts], [*responses_a, *responses_b]), dtype=torch.float64
        )  # float64 as score_ordered_pairs: torch.tensor's default float32 would round the rewards
        return self.preference(rewards[:n] - rewards[n:]).tolist()

    def compare_at_temperature(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str], temperature: float
    ) -> list[float]:
        """:meth:`compare` at ``temperature``; the cached rewards do not depend on it, so nothing is scored again."""
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        own, self.temperature = self.temperature, temperature
        try:
            return self.compare(prompts, responses_a, responses_b)
        finally:
            self.temperature = own

    def score_ordered_pairs(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> torch.Tensor:
        """r_first - r_second for every row (float64), from the reward cache."""
        n = len(prompts)
        rewards = torch.tensor(self.score_responses([*prompts, *prompts], [*first, *second]), dtype=torch.float64)
        return rewards[:n] - rewards[n:]

    def combine_orders(self, forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        """sigmoid((r_a - r_b) / temperature): ``forward - backward`` is exactly 2 (r_a - r_b)."""
        return self.preference((forward.double() - backward.double()) / 2)

    def first_probability(self, scores: torch.Tensor) -> torch.Tensor:
        return self.preference(scores)

    def clear_cache(self) -> None:
        super().clear_cache()
        self._rewards.clear()
