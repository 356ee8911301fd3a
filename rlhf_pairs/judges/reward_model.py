"""A sequence-classification reward model as a judge (``judge_type: reward_model``).

Bradley-Terry reward models (``AutoModelForSequenceClassification`` with one label), e.g. RLHFlow Online-RLHF's
default ``sfairXC/FsfairX-LLaMA3-RM-v0.1`` or ``Skywork/Skywork-Reward-Llama-3.1-8B``: the reward of a response is
the model's logit on the conversation (the prompt's turns, then the response as the assistant turn) rendered with the
RM's own chat template, as their cards score it (``apply_chat_template(conversation, tokenize=True)``: the
template's BOS once, nothing else added). P(a better than b) = sigmoid((r_a - r_b) / temperature)
(:class:`~rlhf_pairs.judges.base.RewardJudge`).

Batching: each (prompt, response) is one row; rows are sorted by length into batches under ``batch_tokens`` padded
tokens and right-padded with the model's ``pad_token_id``, so the classifier reads the position it reads on the
unpadded sequence (transformers pools the rightmost token that is not padding). A model without a
``pad_token_id`` gets the tokenizer's (else its EOS), as RewardBench's ``run_rm.py`` (rewardbench 0.1.4) sets it,
but keeps reading its last token, as it does unpadded (transformers pools position -1 when there is no pad id): a
batch in which a row ends with the borrowed id (Llama-3's template ends every turn with ``<|eot_id|>``, its EOS) is
padded with an id no row of the batch ends with. (RewardBench pools the token before such an EOS instead.)
Rows longer than ``max_length`` (default: the model's ``max_position_embeddings``) keep their first token and their
end (the oldest turns go first); each truncation is counted in a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from rlhf_pairs.data_utils import Prompt, as_messages
from rlhf_pairs.judges.base import RewardJudge, load_model_and_tokenizer, progress_bar
from rlhf_pairs.tokenization import ChatPromptEncoder, batches_by_tokens, pad_batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


class RewardModelJudge(RewardJudge):
    """A sequence-classification reward model (one output) as a judge; see the module docstring.

    Args:
        model: a ``*ForSequenceClassification`` model with ``num_labels == 1``.
        tokenizer: its tokenizer, with the chat template the reward model was trained with.
        temperature: P(a better than b) = sigmoid((r_a - r_b) / temperature).
        max_length: longest row in tokens (``None``: the model's ``max_position_embeddings``, if any).
        batch_tokens: padded tokens per forward; ``max_batch_size``: rows per forward.
        show_progress: a progress bar (``None``: on the main process for calls of 8+ batches).
        cache_size: rewards kept in the cache.
    """

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
    ) -> None:
        super().__init__(temperature=temperature, cache_size=cache_size)
        num_labels = getattr(model.config, "num_labels", None)
        if num_labels != 1:
            raise ValueError(
                f"a reward model judge needs a sequence-classification model with one output (num_labels=1); "
                f"{type(model).__name__} has num_labels={num_labels}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.encoder = ChatPromptEncoder(tokenizer, owner="the reward model's tokenizer")
        # Without a pad id of its own the model pools its last token; a borrowed one must never hide it (_pad_id_for).
        # The model's config is left as it is (set only for the duration of a batch): a second judge on the same model
        # must see what the first one saw.
        self._config_pad = model.config.get_text_config().pad_token_id
        self.borrowed_pad = self._config_pad is None
        if self.borrowed_pad:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad is None:
                raise ValueError(
                    "the reward model has no pad_token_id and its tokenizer neither a pad nor an EOS token"
                )
            self.pad_token_id = pad
        else:
            self.pad_token_id = self._config_pad
        if max_length is None:
            max_length = getattr(model.config, "max_position_embeddings", None)
        if max_length is not None and max_length < 2:
            raise ValueError(f"`max_length` must be at least 2 tokens, got {max_length}")
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.show_progress = show_progress
        self.num_truncated = 0

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
    ) -> RewardModelJudge:
        """Load a reward model from the Hub or a local directory with ``AutoModelForSequenceClassification``.

        ``dtype="auto"`` is bf16 on CUDA and fp32 on CPU; other keyword arguments go to the constructor."""
        from transformers import AutoModelForSequenceClassification

        model, tokenizer = load_model_and_tokenizer(
            AutoModelForSequenceClassification, name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation,
            tokenizer_name_or_path=tokenizer_name_or_path, revision=revision, trust_remote_code=trust_remote_code,
        )  # fmt: skip
        return cls(model, tokenizer, **judge_kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        """The ids the reward model reads for one response: the conversation with the response as its last turn."""
        ids = self.encoder.encode_messages([*as_messages(prompt), {"role": "assistant", "content": response}])
        if self.max_length is not None and len(ids) > self.max_length:
            self.num_truncated += 1
            ids = ids[:1] + ids[len(ids) - self.max_length + 1 :]
        return ids

    @torch.inference_mode()
    def reward_batch(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        truncated_before = self.num_truncated
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        if self.num_truncated > truncated_before:
            logger.warning(
                "%d row(s) exceeded max_length=%d and were truncated (oldest turns first)",
                self.num_truncated - truncated_before,
                self.max_length,
            )
        rewards = torch.empty(len(encoded), dtype=torch.float32)
        batches = batches_by_tokens([len(ids) for ids in encoded], self.batch_tokens, self.max_batch_size)
        config = self.model.config.get_text_config()  # where the classifier reads its pad id
        try:
            for batch in progress_bar(batches, self.show_progress, "reward model"):
                rows = [encoded[i] for i in batch]
                config.pad_token_id = self._pad_id_for(rows)
                input_ids, mask = pad_batch(rows, config.pad_token_id, left=False)
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
                rewards[batch] = logits[:, 0].float().cpu()
        finally:
            config.pad_token_id = self._config_pad
        return rewards

    def _pad_id_for(self, rows: list[list[int]]) -> int:
        """The pad id of a batch: the model's own, or for a model that only borrowed one (it pools its last token),
        the borrowed id unless a row ends with it (the classifier would then read that row one token early), else the
        smallest id no row ends with. Padding sits under a zero attention mask, so its id changes nothing else."""
        last = {row[-1] for row in rows}
        if not self.borrowed_pad or self.pad_token_id not in last:
            return self.pad_token_id
        return next(i for i in range(len(last) + 1) if i not in last)
