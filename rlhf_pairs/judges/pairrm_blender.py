"""llm-blender's original PairRM checkpoint (``llm-blender/PairRM``, the one TRL's former ``PairRMJudge`` loaded
through ``llm_blender``) as a :class:`DebertaV2PairRM`, without llm_blender.

The layout, as llm-blender reads it (checked against yuchenlin/LLM-Blender at commit 2a67366:
``llm_blender/blender/blender.py`` ``Blender.loadranker``, ``blender_utils.load_ranker``,
``pair_ranker/model_util.py``, ``pair_ranker/collator.py`` ``CrossCompareCollator``, ``pair_ranker/ranker.py``
``CrossCompareReranker``):

- ``config.json`` is llm-blender's ``RankerConfig``, not a transformers config: ``ranker_type: "pairranker"``,
  ``model_type: "deberta"``, ``model_name`` (the backbone, ``microsoft/deberta-v3-large``), ``source_maxlength``
  (1224), ``candidate_maxlength`` (412), ``n_tasks``, ``drop_out``, ... (a ``ranker_config.json`` is read the same
  way);
- ``pytorch_model.bin`` (or ``model.safetensors``): ``CrossCompareReranker``'s state dict, ``pretrained_model.*``
  (the backbone's ``AutoModel``, a ``DebertaV2Model``) and ``head_layer.{1,4}.*``: the names of
  :class:`DebertaV2PairRM`'s parameters; older transformers also saved ``*.position_ids`` buffers, dropped here;
- the tokenizer is the backbone's (``model_name``) with ``<|source|>``, ``<|candidate1|>``, ``<|candidate2|>``,
  ``<|candidate|>`` added by ``add_tokens`` in that order, and the embeddings resized to ``len(tokenizer)``.

llm-blender's collator builds the same ids as the PairRM-hf card's ``tokenize_pair`` (``[CLS] <|source|> ... [SEP]``
then each candidate as ``[CLS] <|candidateN|> ... [SEP]``; its candidate budget ``candidate_maxlength +
(source_maxlength - source length) // 2`` is the card's ``(max_length - source length) // 2``), so the judge
scores the loaded model with :class:`~rlhf_pairs.judges.pairrm.PairRMEncoder` and the ranker config's budgets.
"""

from __future__ import annotations

import json
import os

import torch

from rlhf_pairs.judges.modeling_pairrm import DebertaV2PairRM

LLM_BLENDER_PREFIXES = ("<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>")  # add_tokens order
RANKER_CONFIG_FILES = ("ranker_config.json", "config.json")
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")  # load_ranker's order
# Keys an older transformers saved that today's DebertaV2Model rebuilds or never had (its own ignore list).
IGNORED_KEY_SUFFIXES = (".position_ids", ".position_embeddings.weight")


def _checkpoint_file(name_or_path: str, filename: str, revision: str | None = None) -> str | None:
    """Local path of ``filename`` in a local directory or Hub repo, ``None`` when it is not there (or unreachable)."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.isfile(path) else None
    from transformers.utils.hub import cached_file

    try:
        return cached_file(
            name_or_path,
            filename,
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:  # not a repo id, gated, ...: the PairRM-hf path reports it
        return None


def read_ranker_config(name_or_path: str, revision: str | None = None) -> dict | None:
    """llm-blender's ``RankerConfig`` dict when ``name_or_path`` is a checkpoint in its layout, else ``None``
    (a transformers config, as in PairRM-hf, has no ``ranker_type``)."""
    for filename in RANKER_CONFIG_FILES:
        path = _checkpoint_file(name_or_path, filename, revision)
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if isinstance(raw, dict) and "ranker_type" in raw:
            return raw
    return None


def load_llm_blender_state_dict(name_or_path: str, revision: str | None = None) -> dict[str, torch.Tensor]:
    """The ranker's state dict (``pytorch_model.bin`` first, as llm-blender's ``load_ranker``)."""
    for filename in WEIGHT_FILES:
        path = _checkpoint_file(name_or_path, filename, revision)
        if path is None:
            continue
        if filename.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    raise ValueError(f"{name_or_path} has an llm-blender ranker config but neither of {WEIGHT_FILES}")


def load_llm_blender_pairrm(
    name_or_path: str,
    ranker_config: dict,
    *,
    dtype: torch.dtype = torch.float32,
    tokenizer_name_or_path: str | None = None,
    revision: str | None = None,
) -> tuple[DebertaV2PairRM, object, dict]:
    """(model, tokenizer, encoder budgets) of an llm-blender ``pairranker`` checkpoint with a DeBERTa backbone.

    The backbone's transformers config and tokenizer come from ``ranker_config["model_name"]`` (or
    ``tokenizer_name_or_path``), as in llm-blender. Raises ``ValueError`` naming the problem for another ranker
    or backbone type, a vocabulary that does not match the checkpoint, or missing / unexpected weights.
    """
    from transformers import AutoConfig, AutoTokenizer, DebertaV2Config

    ranker_type, model_type = ranker_config.get("ranker_type"), str(ranker_config.get("model_type"))
    if ranker_type != "pairranker" or not model_type.startswith("deberta"):
        raise ValueError(
            f"{name_or_path}: llm-blender ranker_type={ranker_type!r}, model_type={model_type!r}; PairRMJudge loads "
            "'pairranker' checkpoints with a DeBERTa backbone (llm-blender/PairRM)"
        )
    backbone = ranker_config.get("model_name")
    if not backbone:
        raise ValueError(f"{name_or_path}: the llm-blender ranker config names no backbone (`model_name`)")
    config = AutoConfig.from_pretrained(backbone)
    if not isinstance(config, DebertaV2Config):
        raise ValueError(f"{name_or_path}: backbone {backbone!r} is a {type(config).__name__}, not DeBERTa-v2/v3")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path or backbone)
    tokenizer.add_tokens(list(LLM_BLENDER_PREFIXES))  # CrossCompareCollator: existing tokens are kept as they are
    if tokenizer.pad_token is None:  # llm-blender's build_tokenizer
        tokenizer.pad_token = tokenizer.eos_token

    state_dict = {
        key: value
        for key, value in load_llm_blender_state_dict(name_or_path, revision).items()
        if not key.endswith(IGNORED_KEY_SUFFIXES)
    }
    embeddings = state_dict.get("pretrained_model.embeddings.word_embeddings.weight")
    if embeddings is None:
        raise ValueError(
            f"{name_or_path}: no `pretrained_model.embeddings.word_embeddings.weight` in the checkpoint; "
            f"its keys start with {sorted({k.split('.')[0] for k in state_dict})}"
        )
    if embeddings.shape[0] != len(tokenizer):
        raise ValueError(
            f"{name_or_path}: the checkpoint's embeddings have {embeddings.shape[0]} rows, but {backbone!r}'s "
            f"tokenizer with llm-blender's prefix tokens has {len(tokenizer)}: pass the tokenizer it was trained with "
            "as tokenizer_name_or_path"
        )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in LLM_BLENDER_PREFIXES}
    config.vocab_size = embeddings.shape[0]
    config.n_tasks = int(ranker_config.get("n_tasks", 1))
    config.drop_out = float(ranker_config.get("drop_out", 0.05))
    config.source_prefix_id = ids["<|source|>"]
    config.cand1_prefix_id = ids["<|candidate1|>"]
    config.cand2_prefix_id = ids["<|candidate2|>"]
    config.cand_prefix_id = ids["<|candidate|>"]
    config.architectures = ["DebertaV2PairRM"]

    model = DebertaV2PairRM(config)
    loaded = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in loaded.missing_keys if not k.endswith(IGNORED_KEY_SUFFIXES)]
    if missing or loaded.unexpected_keys:
        raise ValueError(
            f"{name_or_path}: the llm-blender checkpoint does not fit DebertaV2PairRM: missing {missing[:8]}, "
            f"unexpected {loaded.unexpected_keys[:8]}"
        )
    model = model.to(dtype).eval()

    source_max_length = int(ranker_config.get("source_maxlength") or 1224)
    candidate_max_length = int(ranker_config.get("candidate_maxlength") or 412)
    defaults = {"source_max_length": source_max_length, "max_length": source_max_length + 2 * candidate_max_length}
    return model, tokenizer, defaults
