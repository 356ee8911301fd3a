"""Load a seed-family judge by type name: the one place jobs (rank, eval, online DPO, iterate) build judges."""

from __future__ import annotations

from rlhf_pairs.judges.base import PairwiseJudge

JUDGE_TYPES = ("pair_lm", "pairrm")


def load_judge(
    judge_type: str,
    name_or_path: str,
    *,
    device=None,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    temperature: float = 1.0,
    max_length: int | None = None,
    batch_tokens: int | None = None,
    pairrm_format: str = "card",
    **judge_kwargs,
) -> PairwiseJudge:
    """``PairPreferenceJudge`` (``judge_type="pair_lm"``) or ``PairRMJudge`` (``"pairrm"``) from the Hub or a path.

    ``None`` for ``attn_implementation``, ``max_length`` or ``batch_tokens`` keeps the judge's own default;
    ``max_length`` applies to the pair LM only (PairRM's budgets are fixed by its card). ``pairrm_format`` (PairRM
    only): its ``conversation_format``, ``"card"`` or ``"rewardbench"`` (see ``rlhf_pairs.judges.pairrm.PAIRRM_FORMATS``).
    The judge is loaded whole even under a ZeRO-3 config (:func:`~rlhf_pairs.utils.distributed.zero3_init_disabled`):
    it runs plain inference on every process and is never wrapped by DeepSpeed.
    Raises ``ValueError`` for an unknown ``judge_type``, or a ``pairrm_format`` other than ``"card"`` for the pair LM.
    """
    from rlhf_pairs.utils.distributed import zero3_init_disabled

    if judge_type not in JUDGE_TYPES:
        raise ValueError(f"judge_type must be one of {JUDGE_TYPES}, got {judge_type!r}")
    if pairrm_format != "card" and judge_type != "pairrm":
        raise ValueError(f"pairrm_format applies to judge_type 'pairrm', not {judge_type!r} (got {pairrm_format!r})")
    kwargs = {"device": device, "dtype": dtype, "temperature": temperature, **judge_kwargs}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if batch_tokens:
        kwargs["batch_tokens"] = batch_tokens
    if judge_type == "pair_lm":
        from rlhf_pairs.judges.pair_lm import PairPreferenceJudge

        if max_length:
            kwargs["max_length"] = max_length
        with zero3_init_disabled():
            return PairPreferenceJudge.from_pretrained(name_or_path, **kwargs)
    from rlhf_pairs.judges.pairrm import PairRMJudge

    with zero3_init_disabled():
        return PairRMJudge.from_pretrained(name_or_path, conversation_format=pairrm_format, **kwargs)
