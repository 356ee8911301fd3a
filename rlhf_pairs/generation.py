"""Sampling candidate responses from a policy with Hugging Face ``generate``, reproducibly.

Prompts are rendered with the policy's chat template (generation prompt added). Message contents are untrusted
text: a special-token string inside them (``<|eot_id|>``) is encoded as plain text, never as the special token.
Generated text is decoded without special tokens; a special-token *string* spelled out by the model from ordinary
pieces is removed (and counted), so a candidate can never end a turn or forge a role when it is later rendered
into a judge's or a trainer's template.

Reproducibility: :func:`generate_candidates` seeds torch's RNG from its ``seed`` before sampling, so the same
inputs, settings, seed, device and dtype give the same candidates. Callers that shard prompts over processes pass
fixed chunks with a seed derived from the chunk (see :func:`rlhf_pairs.utils.hashing.derived_seed`), which makes the
result independent of the number of processes; :func:`generate_sharded` does this, with the chunks saved as resumable
shards. The samplers it drives come from :func:`hf_generator` (HF ``generate`` on this process's device) or
:func:`vllm_generator` (vLLM, main process only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_pairs.data_utils import Prompt
from rlhf_pairs.tokenization import ChatPromptEncoder
from rlhf_pairs.utils.faults import kill_point
from rlhf_pairs.utils.io import read_jsonl, write_jsonl_atomic
from rlhf_pairs.utils.verbosity import show_progress_bars

# A sampler: (prompts, seed) -> (responses per prompt, sanitized count per prompt), as generate_candidates returns.
Sampler = Callable[[Sequence[Prompt], int], tuple[list[list[str]], list[int]]]


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


def hf_generator(model_args, training_args, model_path: str, settings: GenerationSettings, device) -> Sampler:
    """A :data:`Sampler` running :func:`generate_candidates` with ``model_path`` loaded on ``device``.

    The policy and its tokenizer load through :func:`rlhf_pairs.utils.models.load_causal_lm` /
    ``load_tokenizer``, so ``ModelConfig`` and the trainer config's ``model_init_kwargs`` apply as in training."""
    from rlhf_pairs.tokenization import model_device
    from rlhf_pairs.utils.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_args, training_args, model_path)
    model = load_causal_lm(model_args, training_args, model_path)
    model.to(model_device(device))

    def sample(prompts: Sequence[Prompt], seed: int) -> tuple[list[list[str]], list[int]]:
        return generate_candidates(model, tokenizer, prompts, settings, seed)

    return sample


def vllm_generator(
    model_path: str, settings: GenerationSettings, seed: int, tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
) -> Sampler:  # fmt: skip
    """A :data:`Sampler` on a vLLM engine for ``model_path``; every prompt gets its own seed derived from the call's.

    Prompts are encoded by :class:`ChatPromptEncoder` (contents stay plain text) and special-token strings are
    removed from the outputs, as with HF ``generate``. Raises ``ImportError`` without the ``vllm`` extra."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:  # optional extra
        raise ImportError("generation_backend='vllm' needs the vllm extra: pip install 'rlhf-pairs[vllm]'") from e
    from rlhf_pairs.utils.hashing import derived_seed

    llm = LLM(
        model=model_path,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        seed=seed,
    )
    encoder = ChatPromptEncoder(llm.get_tokenizer())

    def sample(prompts: Sequence[Prompt], seed: int) -> tuple[list[list[str]], list[int]]:
        params = [
            SamplingParams(
                n=settings.num_candidates, temperature=settings.temperature, top_p=settings.top_p,
                max_tokens=settings.max_new_tokens, seed=derived_seed(seed, i), skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]  # fmt: skip
        outputs = llm.generate([{"prompt_token_ids": encoder.encode(p)} for p in prompts], params)
        responses, sanitized = [], []
        for output in outputs:
            texts = [encoder.encoder.remove_special(o.text) for o in output.outputs]
            sanitized.append(sum(t != o.text for t, o in zip(texts, output.outputs)))
            responses.append([t.strip() for t in texts])
        return responses, sanitized

    return sample


def generate_sharded(
    make_sampler: Callable[[], Sampler],
    prompts: Sequence[Prompt],
    directory: Path,
    tag: str,
    shard_size: int,
    chunk_seed: Callable[[int], int],
    state,
    main_process_only: bool = False,
    desc: str = "",
) -> tuple[list[list[str]] | None, int]:
    """Responses per prompt, sampled in fixed chunks of ``shard_size`` prompts shared out over processes.

    Chunk ``c`` is sampled with seed ``chunk_seed(c)`` by process ``c % num_processes`` (every chunk by the main
    process with ``main_process_only``, e.g. for vLLM) and saved as ``<directory>/<tag>-<c>.jsonl``, so a killed
    run keeps its finished chunks and the result does not depend on the number of processes. ``make_sampler`` is
    called (the model loaded) only when this process has chunks left. All processes must call this together
    (``state`` is accelerate's ``PartialState``): it ends at a barrier.

    Returns (responses, sanitized count) on the main process and ``(None, 0)`` elsewhere. Raises ``RuntimeError``
    when the shards do not hold one row per prompt (e.g. ``directory`` holds shards of other prompts)."""
    from accelerate.utils import tqdm
    from accelerate.utils.memory import clear_device_cache

    starts = range(0, len(prompts), shard_size)
    paths = [directory / f"{tag}-{c:05d}.jsonl" for c in range(len(starts))]
    if main_process_only:
        todo = list(range(len(starts))) if state.is_main_process else []
    else:
        todo = [c for c in range(len(starts)) if c % state.num_processes == state.process_index]
    todo = [c for c in todo if not paths[c].exists()]
    if todo:
        sample = make_sampler()
        for c in tqdm(todo, desc=desc or tag, disable=not show_progress_bars()):
            chunk = prompts[starts[c] : starts[c] + shard_size]
            responses, sanitized = sample(chunk, chunk_seed(c))
            write_jsonl_atomic(paths[c], [{"responses": r, "sanitized": n} for r, n in zip(responses, sanitized)])
            kill_point("shard")
        del sample
        clear_device_cache(garbage_collection=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None, 0
    rows = [row for path in paths for row in read_jsonl(path)]
    if len(rows) != len(prompts):
        raise RuntimeError(f"{directory} holds {len(rows)} generated rows for {len(prompts)} prompts")
    return [row["responses"] for row in rows], sum(row["sanitized"] for row in rows)
