"""Any causal chat LM as a pairwise judge: P(first better) from the logits of the two verdict label tokens at the
answer position, both orders averaged. RLHFlow's pair preference LM is this judge with the ``rlhflow`` template
(:class:`~rlhf_pairs.judges.pair_lm.PairPreferenceJudge`); other templates prompt a general chat model
(:mod:`rlhf_pairs.judges.templates`)."""

from __future__ import annotations

import inspect
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from rlhf_pairs.data_utils import Prompt, prompt_key
from rlhf_pairs.judges.base import PairwiseJudge, load_model_and_tokenizer, progress_bar
from rlhf_pairs.judges.formatting import make_formatter
from rlhf_pairs.judges.templates import JudgeTemplate, load_template
from rlhf_pairs.tokenization import batches_by_tokens, pad_batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


class GenerativeJudge(PairwiseJudge):
    """A causal chat LM prompted to compare two responses (LLM-as-a-judge), scored from its logits.

    Per ordered pair, P(first is better) = softmax over the logits of the template's two verdict labels at the
    answer position (``temperature``, 1.0 by default); :meth:`compare` averages P(a) over both orders. ``template``
    is a shipped name (``rlhflow``, ``alpaca_eval``, ``arena_hard``, ``mt_bench``), a Jinja file or a
    :class:`~rlhf_pairs.judges.templates.JudgeTemplate`; ``labels`` replaces its labels, each of which must be one
    token of the tokenizer (checked here: ``ValueError`` otherwise). With ``rlhflow`` this is exactly RLHFlow's pair
    preference LM (the card's numbers).

    Inference is batched: rows are sorted by length into batches under ``batch_tokens`` (padded tokens per batch),
    left-padded with explicit position ids, and only the last position's logits are computed.

    Prefix sharing (``share_prefix``): the rows of one prompt (both orders of a pair, every match of a tournament
    round) begin with the same tokens, the template and the whole context. When they share at least
    ``min_shared_prefix`` tokens, that prefix is run once per prompt and its key/value cache is reused by every
    row, which then only computes its own suffix. The probabilities equal the unshared ones to float rounding.
    With padded batches it pays only when the prefix is a large part of the rows (long conversations, short
    responses, many rows per prompt): ``None`` (default) shares a group when its padded tokens (prefix once + each
    row's suffix padded to the group's longest) are at most ``SHARE_COST_RATIO`` of its rows' own tokens, and only
    with the ``sdpa`` and ``eager`` attention implementations (whose masks are tested with a padded prefix and a
    padded suffix); ``True`` shares every group of ``min_shared_prefix`` tokens or more; ``False`` never shares.
    """

    SHARE_COST_RATIO = 0.7  # measured on CPU: the shared layout's padding and cache copies cost ~15-30% extra

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        temperature: float = 1.0,
        max_length: int | None = None,
        batch_tokens: int = 16384,
        max_batch_size: int = 64,
        show_progress: bool | None = None,
        cache_size: int = 100_000,
        share_prefix: bool | None = None,
        min_shared_prefix: int = 32,
        template: str | JudgeTemplate = "rlhflow",
        labels: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(cache_size=cache_size)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        self.model = model.eval()
        self.share_only_when_cheaper = share_prefix is None
        if share_prefix is None:
            share_prefix = getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")
        self.share_prefix = share_prefix
        self.min_shared_prefix = max(int(min_shared_prefix), 1)
        self.num_shared_rows = 0  # rows scored on top of a shared prefix (observability; tests check it)
        self.tokenizer = tokenizer
        if max_length is None:
            max_length = getattr(model.config, "max_position_embeddings", None)
        self.template = load_template(template, labels)
        self.formatter = make_formatter(tokenizer, self.template, max_length=max_length)
        self.temperature = temperature
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.show_progress = show_progress
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad if pad is not None else 0  # masked out: any id will do

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "auto",
        attn_implementation: str | None = "sdpa",
        tokenizer_name_or_path: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **judge_kwargs: Any,
    ) -> GenerativeJudge:
        """Load the judge's causal LM from the Hub or a local directory.

        ``dtype="auto"`` is bf16 on CUDA and fp32 on CPU; ``attn_implementation`` is passed to transformers
        ("sdpa" by default, "flash_attention_2" where flash-attn is installed). Other keyword arguments go to
        the constructor (``template``, ``labels``, ``temperature``, ``max_length``, ``batch_tokens``, ...).
        """
        from transformers import AutoModelForCausalLM

        model, tokenizer = load_model_and_tokenizer(
            AutoModelForCausalLM, name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation,
            tokenizer_name_or_path=tokenizer_name_or_path, revision=revision, trust_remote_code=trust_remote_code,
        )  # fmt: skip
        return cls(model, tokenizer, **judge_kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def score_ordered_pairs(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> torch.Tensor:
        truncated_before = self.formatter.num_truncated
        encoded = [self.formatter.encode(p, a, b) for p, a, b in zip(prompts, first, second)]
        if self.formatter.num_truncated > truncated_before:
            logger.warning(
                "%d comparison(s) exceeded max_length=%d and were truncated (oldest context first)",
                self.formatter.num_truncated - truncated_before,
                self.formatter.max_length,
            )
        groups, plain = self._shared_prefix_groups(prompts, encoded) if self.share_prefix else ([], range(len(encoded)))
        plain = list(plain)
        work = [("plain", [plain[i] for i in batch]) for batch in self._plain_batches(plain, encoded)]
        work += [("shared", batch) for batch in self._group_batches(groups, encoded)]
        label_ids = torch.tensor([self.formatter.token_id_a, self.formatter.token_id_b], device=self.device)
        probs = torch.empty(len(encoded), dtype=torch.float32)
        for kind, batch in progress_bar(work, self.show_progress, "judge LM"):
            if kind == "plain":
                rows, logits = batch, self._last_logits(batch, encoded)
            else:
                rows = [i for group_rows, _ in batch for i in group_rows]
                logits = self._last_logits_shared(batch, encoded)
                self.num_shared_rows += len(rows)
            ab = logits.index_select(-1, label_ids).float() / self.temperature
            probs[rows] = ab.softmax(-1)[:, 0].cpu()
        return probs

    def _plain_batches(self, rows: list[int], encoded: list[list[int]]) -> list[list[int]]:
        """Positions in ``rows`` grouped by :func:`batches_by_tokens`."""
        return batches_by_tokens([len(encoded[i]) for i in rows], self.batch_tokens, self.max_batch_size)

    def _shared_prefix_groups(
        self, prompts: Sequence[Prompt], encoded: list[list[int]]
    ) -> tuple[list[tuple[list[int], int]], list[int]]:
        """(groups of rows sharing a prefix with its length in tokens, rows scored on their own).

        Rows are grouped by prompt; a group's prefix is the longest common token prefix of its rows, one token
        short of the shortest row so that every row keeps a suffix whose last position is read. Groups over
        ``max_batch_size`` rows are split. In the automatic mode a group whose shared layout would not save enough
        padded tokens stays with the plain rows (see the class docstring).
        """
        by_prompt: dict = defaultdict(list)
        for i, prompt in enumerate(prompts):
            by_prompt[prompt_key(prompt)].append(i)
        groups, plain = [], []
        for rows in by_prompt.values():
            ids = [encoded[i] for i in rows]
            length = min(len(os.path.commonprefix(ids)), min(map(len, ids)) - 1) if len(rows) > 1 else 0
            if length < self.min_shared_prefix or (
                self.share_only_when_cheaper
                and length + len(ids) * (max(map(len, ids)) - length) > self.SHARE_COST_RATIO * sum(map(len, ids))
            ):
                plain.extend(rows)
                continue
            for start in range(0, len(rows), self.max_batch_size):
                groups.append((rows[start : start + self.max_batch_size], length))
        return groups, plain

    def _group_batches(self, groups: list[tuple[list[int], int]], encoded: list[list[int]]) -> list[list]:
        """Groups packed into batches, longest first, with (rows x longest row) within ``batch_tokens``."""
        width = [max(len(encoded[i]) for i in rows) for rows, _ in groups]
        batches: list[list[tuple[list[int], int]]] = []
        current: list[int] = []
        rows_in_current = 0
        for g in sorted(range(len(groups)), key=lambda g: -width[g]):
            rows = len(groups[g][0])
            longest = width[current[0]] if current else width[g]
            full = (rows_in_current + rows) * longest > self.batch_tokens
            if current and (full or rows_in_current + rows > self.max_batch_size):
                batches.append([groups[i] for i in current])
                current, rows_in_current = [], 0
            current.append(g)
            rows_in_current += rows
        if current:
            batches.append([groups[i] for i in current])
        return batches

    def _last_logits(self, rows: list[int], encoded: list[list[int]]) -> torch.Tensor:
        """Last-position logits of ``rows``, each run in full (left padding, explicit positions, no cache)."""
        input_ids, mask = pad_batch([encoded[i] for i in rows], self.pad_token_id, left=True)
        # Left padding shifts positions; explicit ids keep every row's positions as in an unpadded forward.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            use_cache=False,
            logits_to_keep=1,
        ).logits[:, -1, :]

    def _last_logits_shared(self, groups: list[tuple[list[int], int]], encoded: list[list[int]]) -> torch.Tensor:
        """Last-position logits of every row of ``groups``: each group's prefix is run once, its key/value cache
        repeated for the group's rows, and the rows' suffixes run on top of it.

        Layout of a row: [pad, prefix | pad, suffix], both parts left-padded, with a 2-D mask over the whole and
        position ids that continue from the row's prefix length, so every real token sees exactly the tokens and
        positions of an unpadded, unshared forward.
        """
        device = self.device
        prefix_ids, prefix_mask = pad_batch(
            [encoded[rows[0]][:length] for rows, length in groups], self.pad_token_id, left=True
        )
        prefix = self.model(
            input_ids=prefix_ids.to(device),
            attention_mask=prefix_mask.to(device),
            position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0).to(device),
            use_cache=True,
            logits_to_keep=1,
        )
        # transformers 5.24 renamed the key/value cache `cache` (`past_key_values` goes in 5.40); older 5.x have
        # only `past_key_values`.
        cache_name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        cache = getattr(prefix, cache_name, None)
        if cache is None:
            cache = prefix.past_key_values
        row_group = torch.tensor([g for g, (rows, _) in enumerate(groups) for _ in rows], dtype=torch.long)
        cache.reorder_cache(row_group.to(device))  # index_select on the batch dimension: one copy per row
        suffix_ids, suffix_mask = pad_batch(
            [encoded[i][length:] for rows, length in groups for i in rows], self.pad_token_id, left=True
        )
        mask = torch.cat([prefix_mask[row_group], suffix_mask], dim=1)
        position_ids = (prefix_mask.sum(-1)[row_group, None] + suffix_mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(
            input_ids=suffix_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids.to(device),
            use_cache=True,
            logits_to_keep=1,
            **{cache_name: cache},
        ).logits[:, -1, :]
