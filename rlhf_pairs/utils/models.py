"""Loading causal LMs (policies, reference models, pair LMs to train) the same way in every job.

One helper turns ``trl.ModelConfig`` plus the trainer config into ``from_pretrained`` keyword arguments, as TRL's
own scripts do: ``revision``, ``dtype`` (a name, ``"auto"`` or ``None``), ``attn_implementation``,
``trust_remote_code`` and the trainer config's ``model_init_kwargs`` (TRL's trainers' field), which win over the
others when they name the same argument.

A checkpoint that does not load (a Hub name offline, a typo, a directory that holds no model) raises an error naming
the input it came from (``--model_name_or_path``, ``--judge``, ...) and what to do: :func:`loading_input`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


class InputLoadError(OSError):
    """A model or tokenizer named by an input (``--judge``, ``--model_name_or_path``, ...) that did not load."""


def input_load_error(argument: str, name, err: Exception) -> Exception:
    """The one-line error for ``argument``'s checkpoint ``name`` that failed to load with ``err``: what, which input,
    what to do. An ``OSError`` stays an :class:`InputLoadError` (``OSError``), anything else a ``ValueError``."""
    detail = " ".join(str(err).split()).rstrip(".:; ") or type(err).__name__
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    if Path(str(name)).exists():
        message = f"{argument} {str(name)!r} did not load: {detail}"
    else:
        message = (
            f"{argument} {str(name)!r} is not a local path and did not load from the Hugging Face Hub: {detail}. Give a "
            "local model directory (`rlhf-pairs tiny-models` writes tiny ones to try offline), or run with network "
            "access to the Hub"
        )
    return (InputLoadError if isinstance(err, OSError) else ValueError)(message)


@contextmanager
def loading_input(argument: str, name):
    """Around a ``from_pretrained`` of ``name``: its ``OSError``/``ValueError`` re-raised as
    :func:`input_load_error` (once: an error that already names its input passes through)."""
    try:
        yield
    except (OSError, ValueError) as err:
        if getattr(err, "names_input", False):
            raise
        wrapped = input_load_error(argument, name, err)
        wrapped.names_input = True
        raise wrapped from err


def model_init_kwargs(model_args, training_args=None, *, revision: bool = True) -> dict:
    """``from_pretrained`` keyword arguments from a ``trl.ModelConfig`` and a trainer config (may be ``None``).

    ``revision=False`` leaves the revision out, for loading a local checkpoint written by a previous stage."""
    import torch

    dtype = model_args.dtype
    if dtype not in ("auto", None):
        dtype = getattr(torch, dtype)
    kwargs = {"dtype": dtype if dtype is not None else "auto"}
    if revision and getattr(model_args, "model_revision", None):
        kwargs["revision"] = model_args.model_revision
    if getattr(model_args, "attn_implementation", None):
        kwargs["attn_implementation"] = model_args.attn_implementation
    if training_args is not None and getattr(training_args, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    if getattr(model_args, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    extra = getattr(training_args, "model_init_kwargs", None) or {}
    return {**kwargs, **extra}


def load_causal_lm(model_args, training_args=None, path: str | None = None):
    """``AutoModelForCausalLM.from_pretrained(path or model_args.model_name_or_path, **model_init_kwargs(...))``;
    a ``path`` other than the configured model (a previous round's checkpoint) is loaded without the revision."""
    from transformers import AutoModelForCausalLM

    path = path or model_args.model_name_or_path
    same = path == model_args.model_name_or_path
    with loading_input(_argument(model_args, path), path):
        return AutoModelForCausalLM.from_pretrained(path, **model_init_kwargs(model_args, training_args, revision=same))


def _argument(model_args, path) -> str:
    """The input that named ``path``: the configured model, or a checkpoint an earlier stage wrote."""
    return "--model_name_or_path" if path == model_args.model_name_or_path else "the checkpoint"


def load_tokenizer(model_args, training_args=None, path: str | None = None, pad_with_eos: bool = False):
    """The tokenizer of ``path`` (default the configured model); ``pad_with_eos`` gives a tokenizer without a pad
    token its EOS token as pad (what TRL's generation trainers expect)."""
    from transformers import AutoTokenizer

    path = path or model_args.model_name_or_path
    kwargs = {}
    if path == model_args.model_name_or_path and getattr(model_args, "model_revision", None):
        kwargs["revision"] = model_args.model_revision
    if getattr(training_args, "trust_remote_code", False) or getattr(model_args, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    with loading_input(_argument(model_args, path), path):
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if pad_with_eos and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
