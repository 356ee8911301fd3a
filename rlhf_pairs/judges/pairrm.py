"""llm-blender's PairRM: a DeBERTa-v3 pair ranker, loaded from ``llm-blender/PairRM-hf`` checkpoints as they are (and
from llm-blender's original ``llm-blender/PairRM`` layout, see :mod:`rlhf_pairs.judges.pairrm_blender`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from rlhf_pairs.data_utils import Prompt, as_messages
from rlhf_pairs.judges.base import PairwiseJudge, check_pair_inputs, progress_bar
from rlhf_pairs.judges.constants import CANDIDATE_MAX_LENGTH, MAX_LENGTH, SOURCE_MAX_LENGTH  # noqa: F401 (re-exported)
from rlhf_pairs.judges.modeling_pairrm import DebertaV2PairRM, use_sdpa_attention
from rlhf_pairs.tokenization import SafeEncoder, batches_by_tokens, pad_batch, resolve_device_and_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"

DEFAULT_PAIRRM = "llm-blender/PairRM-hf"  # what PairRMJudge() loads (TRL's PairRMJudge() loaded llm-blender/PairRM)

PAIRRM_CONV_INSTRUCTION = (
    "Finish the following coversation in each i-th turn by filling in <Response i> with your response."
)

# How a prompt becomes PairRM's source and candidates:
# - "card": the PairRM-hf card: a single-turn prompt is the source as is (`tokenize_pair`), a multi-turn one takes
#   the card's `tokenize_conv_pair` format;
# - "rewardbench": reward-bench's PairRM pipeline (rewardbench 0.1.4, `rewardbench/models/pairrm.py`,
#   `PairRMPipeline`), which formats every prompt with `tokenize_conv_pair`, a single-turn one as the conversation
#   [user prompt, assistant response]; use it to compare with reward-bench's published PairRM numbers.
PAIRRM_FORMATS = ("card", "rewardbench")


def pairrm_source_and_candidates(
    prompt: Prompt, response_a: str, response_b: str, conversation_format: str = "card"
) -> tuple[str, str, str]:
    """PairRM's (source, candidate 1, candidate 2) texts.

    With ``conversation_format="card"`` a string prompt or a single user message is used as is (the card's
    ``tokenize_pair``). A multi-turn prompt, and with ``"rewardbench"`` every prompt, becomes the card's
    ``tokenize_conv_pair`` format: the two conversations share the context, differ in the last assistant turn, user
    turns go to the source and every assistant turn (earlier ones included) to the candidates.
    """
    messages = as_messages(prompt)
    if len(messages) == 1 and conversation_format == "card":
        return messages[0]["content"], response_a, response_b
    users = [m["content"] for m in messages[0::2]]
    earlier = [m["content"] for m in messages[1::2]]
    source = PAIRRM_CONV_INSTRUCTION + "\n".join(
        f"USER: {content}\nAssistant: <Response {i + 1}>" for i, content in enumerate(users)
    )

    def candidate(last: str) -> str:
        return "\n".join(f"<Response {i + 1}>: {content}" for i, content in enumerate([*earlier, last]))

    return source, candidate(response_a), candidate(response_b)


class PairRMEncoder:
    """The card's ``tokenize_pair`` (and ``tokenize_conv_pair`` for multi-turn prompts), safe against forgery.

    Source: ``<|source|>`` + text, at most ``source_max_length`` tokens; each candidate: ``<|candidate1|>`` /
    ``<|candidate2|>`` + text, at most ``(max_length - len(source_ids)) // 2`` tokens. Over-long texts lose their
    end; the special tokens and prefix tokens the model reads are always kept. A special-token string inside a
    text stays plain text. ``conversation_format``: one of :data:`PAIRRM_FORMATS`, see
    :func:`pairrm_source_and_candidates`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        source_max_length: int = SOURCE_MAX_LENGTH,
        max_length: int = MAX_LENGTH,
        conversation_format: str = "card",
    ) -> None:
        if conversation_format not in PAIRRM_FORMATS:
            raise ValueError(f"`conversation_format` must be one of {PAIRRM_FORMATS}, got {conversation_format!r}")
        self.conversation_format = conversation_format
        if not 0 < source_max_length < max_length:
            raise ValueError(
                f"PairRM needs 0 < source_max_length < max_length, got source_max_length={source_max_length} and "
                f"max_length={max_length} (the card's: {SOURCE_MAX_LENGTH} and {MAX_LENGTH})"
            )
        self.tokenizer = tokenizer
        self.encoder = SafeEncoder(tokenizer)
        self.source_max_length = source_max_length
        self.max_length = max_length
        self.prefix_ids = {}
        for prefix in (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX):
            ids = tokenizer.convert_tokens_to_ids(prefix)
            if ids is None or ids == tokenizer.unk_token_id:
                raise ValueError(f"the PairRM tokenizer has no {prefix} token")
            self.prefix_ids[prefix] = ids
        # How `encode` wraps a text with special tokens ([CLS] ... [SEP] for DeBERTa), for the safe path.
        bare = self.encoder.template(SOURCE_PREFIX)
        full = self.encoder.template(SOURCE_PREFIX, add_special_tokens=True)
        start = full.index(bare[0])
        self._head_extra, self._tail = full[:start], full[start + len(bare) :]

    def piece(self, prefix: str, text: str, max_length: int) -> tuple[list[int], int]:
        """(ids of prefix + text truncated to ``max_length``, index of the prefix token)."""
        if not self.encoder.has_special(text):
            ids = self.tokenizer.encode(prefix + text, max_length=max_length, truncation=True)  # the card's path
        else:
            head = self._head_extra + [self.prefix_ids[prefix]]
            room = max(max_length - len(head) - len(self._tail), 0)
            ids = head + self.encoder.plain(text)[:room] + self._tail
        return ids, ids.index(self.prefix_ids[prefix])

    def encode(self, prompt: Prompt, first: str, second: str) -> tuple[list[int], tuple[int, int, int]]:
        """(input ids, positions of the source, candidate 1 and candidate 2 prefix tokens)."""
        source, cand1, cand2 = pairrm_source_and_candidates(prompt, first, second, self.conversation_format)
        source_ids, source_pos = self.piece(SOURCE_PREFIX, source, self.source_max_length)
        budget = (self.max_length - len(source_ids)) // 2
        cand1_ids, cand1_pos = self.piece(CAND1_PREFIX, cand1, budget)
        cand2_ids, cand2_pos = self.piece(CAND2_PREFIX, cand2, budget)
        offset2 = len(source_ids) + len(cand1_ids)
        return source_ids + cand1_ids + cand2_ids, (source_pos, len(source_ids) + cand1_pos, offset2 + cand2_pos)


class PairRMJudge(PairwiseJudge):
    """llm-blender's PairRM without llm_blender: P(a better than b) = sigmoid((f(a, b) - f(b, a)) / temperature),
    where f is :class:`DebertaV2PairRM`'s logit for the ordered pair.

    ``PairRMJudge()`` with no model loads ``llm-blender/PairRM-hf`` (:meth:`from_pretrained` with its defaults), as
    TRL's former ``PairRMJudge()`` loaded llm-blender's PairRM; ``PairRMJudge(model, tokenizer, ...)`` wraps a loaded
    model. ``conversation_format``: ``"card"`` (default) or ``"rewardbench"`` (reward-bench's PairRM input format),
    see :data:`PAIRRM_FORMATS`.

    Inference is batched: rows sorted by length into batches under ``batch_tokens``, padded to the batch's
    longest row (the card pads everything to 2048; padding is masked, so the logits are the same).
    """

    def __init__(
        self,
        model: DebertaV2PairRM | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        temperature: float = 1.0,
        source_max_length: int = SOURCE_MAX_LENGTH,
        max_length: int = MAX_LENGTH,
        batch_tokens: int = 32768,
        max_batch_size: int = 64,
        show_progress: bool | None = None,
        cache_size: int = 100_000,
        conversation_format: str = "card",
    ) -> None:
        super().__init__(cache_size=cache_size)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        if model is None:
            if tokenizer is not None:
                raise ValueError("PairRMJudge got a tokenizer but no model: pass both, or neither for PairRM-hf")
            model, tokenizer, _ = load_pairrm(DEFAULT_PAIRRM)
        elif tokenizer is None:
            raise ValueError("PairRMJudge got a model but no tokenizer: pass the model's tokenizer too")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.encoder = PairRMEncoder(
            tokenizer,
            source_max_length=source_max_length,
            max_length=max_length,
            conversation_format=conversation_format,
        )
        for prefix, name in ((SOURCE_PREFIX, "source"), (CAND1_PREFIX, "cand1"), (CAND2_PREFIX, "cand2")):
            configured = getattr(model.config, f"{name}_prefix_id", None)
            if configured is not None and configured != self.encoder.prefix_ids[prefix]:
                raise ValueError(
                    f"config.{name}_prefix_id={configured} but the tokenizer maps {prefix} to "
                    f"{self.encoder.prefix_ids[prefix]}: model and tokenizer do not belong together"
                )
        self.temperature = temperature
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.show_progress = show_progress
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def conversation_format(self) -> str:
        return self.encoder.conversation_format

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_PAIRRM,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "auto",
        attn_implementation: str | None = "sdpa",
        tokenizer_name_or_path: str | None = None,
        revision: str | None = None,
        **judge_kwargs: Any,
    ) -> PairRMJudge:
        """Load ``llm-blender/PairRM-hf`` (or a local directory in its layout), or llm-blender's original
        ``llm-blender/PairRM`` layout (a ``pairranker`` ranker config, see :mod:`rlhf_pairs.judges.pairrm_blender`).

        ``dtype="auto"``: bf16 on CUDA, fp32 on CPU (the card runs fp32). ``attn_implementation``: ``"sdpa"``
        (default, DeBERTa's disentangled attention as one fused SDPA call, equal to eager to float rounding: see
        ``modeling_pairrm``) or ``"eager"`` (transformers' own). Other keyword arguments go to the constructor
        (``temperature``, ``conversation_format``, ``batch_tokens``, ...).
        """
        model, tokenizer, defaults = load_pairrm(
            name_or_path,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            tokenizer_name_or_path=tokenizer_name_or_path,
            revision=revision,
        )
        return cls(model, tokenizer, **{**defaults, **judge_kwargs})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def combine_orders(self, forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((forward - backward) / self.temperature)

    def first_probability(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores / self.temperature)

    def compare_at_temperature(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str], temperature: float
    ) -> list[float]:
        """:meth:`compare` at another temperature: sigmoid((f(a, b) - f(b, a)) / temperature). The cached logits do
        not depend on the temperature, so this goes through the cache."""
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        check_pair_inputs(prompts, responses_a, responses_b)
        forward, backward = self._cached_both_orders(prompts, responses_a, responses_b)
        return torch.sigmoid((forward - backward) / temperature).tolist()

    @torch.inference_mode()
    def score_ordered_pairs(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> torch.Tensor:
        """f(first, second) for each row: PairRM's logit, > 0 when ``first`` is better."""
        encoded = [self.encoder.encode(p, a, b) for p, a, b in zip(prompts, first, second)]
        batches = batches_by_tokens([len(ids) for ids, _ in encoded], self.batch_tokens, self.max_batch_size)
        logits = torch.empty(len(encoded), dtype=torch.float32)
        for batch in progress_bar(batches, self.show_progress, "PairRM"):
            input_ids, mask = pad_batch([encoded[i][0] for i in batch], self.pad_token_id, left=False)
            positions = torch.tensor([encoded[i][1] for i in batch], dtype=torch.long, device=self.device).T
            out = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                source_positions=positions[0],
                cand1_positions=positions[1],
                cand2_positions=positions[2],
            )
            logits[batch] = out.logits.float().cpu()
        return logits


def load_pairrm(
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str | None = "sdpa",
    tokenizer_name_or_path: str | None = None,
    revision: str | None = None,
) -> tuple[DebertaV2PairRM, PreTrainedTokenizerBase, dict]:
    """(model, tokenizer, encoder budgets) of a PairRM checkpoint: PairRM-hf's layout, or llm-blender's original
    one (whose ranker config holds the budgets: ``{"source_max_length": ..., "max_length": ...}``; ``{}`` for -hf).
    Raises ``ValueError`` for an ``attn_implementation`` other than ``"sdpa"`` or ``"eager"``."""
    from transformers import AutoTokenizer

    from rlhf_pairs.judges.pairrm_blender import load_llm_blender_pairrm, read_ranker_config

    if attn_implementation not in (None, "sdpa", "eager"):
        raise ValueError(
            f"PairRM's attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r} "
            "(DeBERTa's disentangled attention has no flash-attention path)"
        )
    device, dtype = resolve_device_and_dtype(device, dtype)
    ranker_config = read_ranker_config(name_or_path, revision=revision)
    if ranker_config is not None:
        model, tokenizer, defaults = load_llm_blender_pairrm(
            name_or_path, ranker_config, dtype=dtype, tokenizer_name_or_path=tokenizer_name_or_path, revision=revision
        )
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path or name_or_path, revision=revision)
        model = DebertaV2PairRM.from_pretrained(name_or_path, dtype=dtype, revision=revision)
        defaults = {}
    model = model.to(device)
    use_sdpa_attention(model, attn_implementation != "eager")
    return model, tokenizer, defaults
