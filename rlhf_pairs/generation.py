"""Sampling candidate responses from a policy with Hugging Face ``generate``, reproducibly.

Prompts are rendered with the policy's chat template (generation prompt added). Message contents are untrusted
text: a special-token string inside them (``<|eot_id|>``) is encoded as plain text, never as the special token.
Generated text is decoded without special tokens; a special-token *string* spelled out by the model from ordinary
pieces is removed (and counted), so a candidate can never end a turn or forge a role when it is later rendered
into a judge's or a trainer's template.

Reproducibility: :func:`generate_candidates` seeds torch's RNG from its ``seed`` before sampling, so the same
inputs, settings, seed, device and dtype give the same candidates. Callers that shard prompts over processes pass
fixed chunks with a seed derived from the chunk (see :func:`rlhf_pairs.utils.hashing.derived_seed`), which makes the result independent of
the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf_pairs.data_utils import Prompt, as_messages
from rlhf_pairs.tokenization import SafeEncoder

_SENTINEL = "\x00RLHF_PAIRS_MESSAGE_{}\x00"


class ChatPromptEncoder:
    """Token ids of a chat prompt under the tokenizer's chat template, with message contents kept as plain text."""

    def __init__(self, tokenizer):
        if tokenizer.chat_template is None:
            raise ValueError(f"the policy's tokenizer ({type(tokenizer).__name__}) has no chat template")
        self.tokenizer = tokenizer
        self.encoder = SafeEncoder(tokenizer)

    def encode(self, prompt: Prompt) -> list[int]:
        messages = as_messages(prompt)
        if not any(self.encoder.has_special(m["content"]) for m in messages):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.encoder.template(text)
        # Render with placeholders, then encode the template pieces as template and the contents as plain text.
        placeholders = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
        text = self.tokenizer.apply_chat_template(placeholders, add_generation_prompt=True, tokenize=False)
        ids: list[int] = []
        for i, message in enumerate(messages):
            sentinel = _SENTINEL.format(i)
            if text.count(sentinel) != 1:
                raise ValueError("the chat template must place every message's content exactly once")
            head, text = text.split(sentinel)
            ids += self.encoder.template(head) + self.encoder.plain(message["content"])
        return ids + self.encoder.template(text)


@dataclass
class GenerationSettings:
    """How candidates are sampled. ``temperature=0`` is greedy decoding (then ``num_candidates`` must be 1)."""

    num_candidates: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16


def generate_candidates(
    model, tokenizer, prompts: Sequence[Prompt], settings: GenerationSettings, seed: int
) -> tuple[list[list[str]], list[int]]:
    """Sample ``settings.num_candidates`` responses per prompt; returns (responses, sanitized) per prompt.

    Prompts are batched in order of length (left padding) ``settings.batch_size`` at a time; the output keeps the
    input order. ``sanitized[i]`` counts prompt i's responses from which a special-token string was removed.
    Raises ``ValueError`` for an empty prompt list or greedy decoding with several candidates.
    """
    if not prompts:
        raise ValueError("`prompts` is empty: nothing to generate")
    if settings.temperature <= 0 and settings.num_candidates > 1:
        raise ValueError(
            f"greedy decoding (temperature={settings.temperature}) gives {settings.num_candidates} identical "
            "candidates; set a positive temperature"
        )
    encoder = ChatPromptEncoder(tokenizer)
    encoded = [encoder.encode(p) for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: list[list[str] | None] = [None] * len(prompts)
    sanitized = [0] * len(prompts)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]) :] = 1
        sampling = {"do_sample": False}
        if settings.temperature > 0:
            sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=settings.max_new_tokens,
                num_return_sequences=settings.num_candidates,
                pad_token_id=pad_id,
                **sampling,
            )
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        for row, i in enumerate(batch):
            responses = []
            for text in texts[row * settings.num_candidates : (row + 1) * settings.num_candidates]:
                clean = encoder.encoder.remove_special(text)
                sanitized[i] += clean != text
                responses.append(clean.strip())
            outputs[i] = responses
    model.train(was_training)
    return outputs, sanitized
