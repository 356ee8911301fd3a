"""Tokenization that untrusted text cannot forge, and length-sorted batching under a token budget."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from rlhf_pairs.data_utils import Prompt, as_messages

_SENTINEL = "\x00RLHF_PAIRS_MESSAGE_{}\x00"


class SafeEncoder:
    """Encodes template text (whose special-token strings are meant) around untrusted text (whose are not).

    A response that contains ``<|eot_id|>`` or ``<|candidate2|>`` must stay plain text, otherwise it could end the
    turn or forge a second candidate. Text with no special-token string is encoded exactly as the seed cards do
    (one ``encode`` of the whole string), so the default path keeps bit-identical ids; text with one is encoded in
    pieces, the untrusted piece with ``split_special_tokens=True``.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        vocab = {**tokenizer.get_added_vocab(), **dict(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids))}
        added = sorted(vocab, key=len, reverse=True)
        self._special = re.compile("|".join(re.escape(t) for t in added)) if added else None
        # An unknown-token id in untrusted text is harmless; any other special id would be a forgery.
        self._forbidden = {i for i in vocab.values() if i != tokenizer.unk_token_id}

    def has_special(self, text: str) -> bool:
        return self._special is not None and self._special.search(text) is not None

    def remove_special(self, text: str) -> str:
        """``text`` with every special-token string removed (for generated text that spelled one out)."""
        return self._special.sub("", text) if self._special is not None else text

    def plain(self, text: str) -> list[int]:
        """Ids of ``text`` with no special tokens added and every special-token string kept as plain text."""
        if not text:
            return []
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if self._forbidden.isdisjoint(ids):
            return ids
        # Some vocabularies (SentencePiece conversions) also hold "[SEP]" & co. as ordinary pieces: encode each
        # occurrence of a special-token string one character at a time so it cannot match a whole piece.
        pieces, start = [], 0
        for match in self._special.finditer(text):
            pieces.append(text[start : match.start()])
            pieces.extend(match.group())
            start = match.end()
        pieces.append(text[start:])
        out = []
        for piece in filter(None, pieces):
            out.extend(self.tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        return [i for i in out if i not in self._forbidden]

    def template(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of trusted template text: special-token strings become special tokens."""
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


class ChatPromptEncoder:
    """Token ids of a conversation under the tokenizer's chat template, with message contents kept as plain text.

    :meth:`encode` renders a prompt with the generation prompt added (the policy's input); :meth:`encode_messages`
    any conversation, e.g. a prompt and the response a reward model scores. A content holding a special-token string
    (``<|eot_id|>``) is encoded as plain text; without one the ids are those of ``apply_chat_template(...,
    tokenize=True)`` (the template's own BOS once, no other special token added).
    """

    def __init__(self, tokenizer, owner: str = "the policy's tokenizer"):
        if tokenizer.chat_template is None:
            raise ValueError(f"{owner} ({type(tokenizer).__name__}) has no chat template")
        self.tokenizer = tokenizer
        self.encoder = SafeEncoder(tokenizer)

    def encode(self, prompt: Prompt) -> list[int]:
        """The ids of ``prompt`` (a string or messages) with the generation prompt added."""
        return self.encode_messages(as_messages(prompt), add_generation_prompt=True)

    def encode_messages(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
        if not any(self.encoder.has_special(m["content"]) for m in messages):
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
            return self.encoder.template(text)
        # Render with placeholders, then encode the template pieces as template and the contents as plain text.
        placeholders = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
        text = self.tokenizer.apply_chat_template(
            placeholders, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        ids: list[int] = []
        for i, message in enumerate(messages):
            sentinel = _SENTINEL.format(i)
            if text.count(sentinel) != 1:
                raise ValueError("the chat template must place every message's content exactly once")
            head, text = text.split(sentinel)
            ids += self.encoder.template(head) + self.encoder.plain(message["content"])
        return ids + self.encoder.template(text)


def batches_by_tokens(lengths: Sequence[int], max_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first, so that a padded batch
    (``len(batch) * longest``) stays within ``max_tokens`` (a single longer sequence gets its own batch).

    The sort is stable, so rows of equal length keep their order (both orders of a pair stay side by side).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * longest > max_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded to the longest sequence, on the left or the right."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def model_device(device: str | torch.device) -> torch.device:
    """The device to put a model on: ``device`` itself, except that every CPU device is plain ``cpu``.

    A process group reports "cpu:0"; moving weights there re-allocates them with another alignment and MKL rounds
    float32 matmuls differently, so 1 and K processes would disagree in the last bits.
    """
    device = torch.device(device)
    return torch.device("cpu") if device.type == "cpu" else device


def resolve_device_and_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype
) -> tuple[torch.device, torch.dtype]:
    """``device=None`` picks CUDA when present; ``dtype="auto"`` is bf16 on CUDA and fp32 elsewhere."""
    device = model_device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"`dtype` must be 'auto' or a torch dtype name like 'bfloat16', got {dtype!r}")
        dtype = getattr(torch, dtype)
    return device, dtype
