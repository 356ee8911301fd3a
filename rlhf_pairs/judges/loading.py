"""Load a judge by type name or import path: the one place jobs (rank, eval, iterate, online DPO, GRPO) build judges.

``judge_type`` is one of :data:`JUDGE_TYPES` or an import path ``package.module:Class`` naming your own judge:

- a :class:`~rlhf_pairs.judges.base.PairwiseJudge` subclass (or any class with ``compare`` and a
  ``from_pretrained``): built as ``Class.from_pretrained(judge, device=..., **options)``;
- a judge written for TRL's former API (a class with ``judge(prompts, completions, shuffle_order)`` and no
  ``from_pretrained``, e.g. TRL 0.19's ``HfPairwiseJudge``): built as ``Class(judge)``, or ``Class()`` when its
  constructor takes no argument (a ``BasePairwiseJudge`` subclass with only ``judge()``), and wrapped in
  :class:`~rlhf_pairs.judges.trl_adapter.TRLJudgeAdapter`.

``options`` are the judge settings the user changed from their defaults (``dtype``, ``attn_implementation``,
``temperature``, ``max_length``, ``batch_tokens``) plus any extra keyword arguments; ``device`` is passed when
``from_pretrained`` accepts it. A setting the class does not accept is an error that names it, never silently lost.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by the configs at argument parsing: no torch here
    import torch

    from rlhf_pairs.judges.generative import GenerativeJudge
    from rlhf_pairs.judges.pairrm import PairRMJudge
    from rlhf_pairs.judges.reward_model import RewardModelJudge
    from rlhf_pairs.ranking import SupportsCompare

logger = logging.getLogger(__name__)

JUDGE_TYPES = ("pair_lm", "pairrm", "reward_model", "remote", "llm", "openai")


def is_import_path(judge_type: str) -> bool:
    """True for ``package.module:Class`` (a judge class given by import path), False for a built-in type name."""
    return ":" in judge_type


def resolve_judge_class(spec: str) -> type[Any]:
    """The class ``package.module:Class`` names (``Class`` may be dotted: ``module:Outer.Inner``).

    Raises ``ValueError`` naming what is wrong: a malformed path, a module that cannot be imported (with the
    import error), a missing attribute, something that is not a class, or a class that is neither a pair judge
    (``compare`` + ``from_pretrained``) nor a TRL-style judge (``judge``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise ValueError(f"judge_type {spec!r} must be {JUDGE_TYPES} or an import path 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"judge_type {spec!r}: cannot import module {module_name!r} ({type(err).__name__}: {err}); is it "
            "installed or on PYTHONPATH?"
        ) from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"judge_type {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not inspect.isclass(target):
        raise ValueError(f"judge_type {spec!r} names a {type(target).__name__}, not a judge class")
    pairwise = callable(getattr(target, "compare", None)) and callable(getattr(target, "from_pretrained", None))
    trl_style = callable(getattr(target, "judge", None)) and not callable(getattr(target, "from_pretrained", None))
    if inspect.isabstract(target):
        missing = ", ".join(sorted(getattr(target, "__abstractmethods__", ())))
        raise ValueError(f"judge_type {spec!r}: {target.__name__} is abstract (it does not implement {missing})")
    if not (pairwise or trl_style):
        raise ValueError(
            f"judge_type {spec!r}: {target.__name__} is not a judge: it needs compare() and a from_pretrained() "
            "classmethod (subclass rlhf_pairs.PairwiseJudge), or TRL's judge(prompts, completions) method"
        )
    return target


def load_judge(
    judge_type: str,
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str | None = None,
    temperature: float = 1.0,
    max_length: int | None = None,
    batch_tokens: int | None = None,
    pairrm_format: str = "card",
    **judge_kwargs: Any,
) -> SupportsCompare:
    """The judge of ``judge_type`` from the Hub or a path: ``PairPreferenceJudge`` (``"pair_lm"``),
    ``PairRMJudge`` (``"pairrm"``), ``RewardModelJudge`` (``"reward_model"``), any chat LM prompted as a judge
    (``"llm"``: :class:`~rlhf_pairs.judges.generative.GenerativeJudge`, ``template``/``labels`` in ``judge_kwargs``),
    a model behind an OpenAI-compatible server at the API base URL ``name_or_path`` (``"openai"``:
    :class:`~rlhf_pairs.judges.openai_compatible.OpenAIJudge`), a judge served by ``rlhf-pairs serve-judge`` at the
    URL ``name_or_path`` (``"remote"``: :class:`~rlhf_pairs.judges.remote.RemoteJudge`), or a class by import path
    (see the module docstring).

    ``None`` for ``attn_implementation``, ``max_length`` or ``batch_tokens`` keeps the judge's own default;
    ``max_length`` applies to the pair LM and the reward model (PairRM's budgets are fixed by its card).
    ``pairrm_format`` (PairRM only): its ``conversation_format``, ``"card"`` or ``"rewardbench"`` (see
    ``rlhf_pairs.judges.pairrm.PAIRRM_FORMATS``). The judge is loaded whole even under a ZeRO-3 config
    (:func:`~rlhf_pairs.utils.distributed.zero3_init_disabled`): it runs plain inference on every process and is
    never wrapped by DeepSpeed. Raises ``ValueError`` for an unknown ``judge_type``, a bad import path, an option
    the judge does not take, or a ``pairrm_format`` other than ``"card"`` for another judge.
    """
    from rlhf_pairs.utils.distributed import zero3_init_disabled

    if pairrm_format != "card" and judge_type != "pairrm":
        raise ValueError(f"pairrm_format applies to judge_type 'pairrm', not {judge_type!r} (got {pairrm_format!r})")
    if is_import_path(judge_type):
        options = {
            "dtype": None if dtype == "auto" else dtype,
            "attn_implementation": attn_implementation,
            "temperature": None if temperature == 1.0 else temperature,
            "max_length": max_length,
            "batch_tokens": batch_tokens,
        }
        options = {key: value for key, value in options.items() if value is not None}
        with zero3_init_disabled():
            return _load_by_import_path(judge_type, name_or_path, device, {**options, **judge_kwargs})
    if judge_type not in JUDGE_TYPES:
        raise ValueError(
            f"judge_type must be one of {JUDGE_TYPES} or an import path 'package.module:Class', got {judge_type!r}"
        )
    if judge_type == "remote":  # served by `rlhf-pairs serve-judge`: settings asked here must be the server's
        from rlhf_pairs.judges.remote import RemoteJudge

        asked = {
            "dtype": None if dtype == "auto" else _dtype_name(dtype),
            "attn_implementation": attn_implementation, "temperature": None if temperature == 1.0 else temperature,
            "max_length": max_length, "batch_tokens": batch_tokens,
        }  # fmt: skip
        judge_kwargs["expect"] = {key: value for key, value in asked.items() if value is not None}
        return RemoteJudge.from_pretrained(name_or_path, **judge_kwargs)
    if judge_type == "openai":  # a model behind an OpenAI-compatible server: no local settings apply
        from rlhf_pairs.judges.openai_compatible import OpenAIJudge

        local = {"dtype": dtype != "auto", "attn_implementation": attn_implementation, "max_length": max_length,
                 "batch_tokens": batch_tokens}  # fmt: skip
        refused = [name for name, value in local.items() if value]
        if refused:
            raise ValueError(
                f"judge_type 'openai' runs on its server: {', '.join(refused)} cannot apply; unset them (the judge's "
                "prompt and verdict options are judge_template, judge_labels, judge_temperature)"
            )
        return OpenAIJudge.from_pretrained(name_or_path, temperature=temperature, **judge_kwargs)
    kwargs = {"device": device, "dtype": dtype, "temperature": temperature, **judge_kwargs}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if batch_tokens:
        kwargs["batch_tokens"] = batch_tokens
    if max_length and judge_type != "pairrm":
        kwargs["max_length"] = max_length
    judge_class: type[GenerativeJudge | RewardModelJudge | PairRMJudge]  # a PairPreferenceJudge is a GenerativeJudge
    if judge_type == "pair_lm":
        from rlhf_pairs.judges.pair_lm import PairPreferenceJudge as judge_class
    elif judge_type == "llm":
        from rlhf_pairs.judges.generative import GenerativeJudge as judge_class
    elif judge_type == "reward_model":
        from rlhf_pairs.judges.reward_model import RewardModelJudge as judge_class
    else:
        from rlhf_pairs.judges.pairrm import PairRMJudge as judge_class

        kwargs["conversation_format"] = pairrm_format
    with zero3_init_disabled():
        return judge_class.from_pretrained(name_or_path, **kwargs)


def _dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name of a dtype given by name, alias (``"half"`` -> ``"float16"``) or as a torch dtype."""
    import torch

    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else str(dtype)


def _accepts(function: Any, name: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in parameters) or any(
        p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters
    )


def _load_by_import_path(
    spec: str, name_or_path: str, device: str | torch.device | None, options: dict[str, Any]
) -> SupportsCompare:
    cls = resolve_judge_class(spec)
    if callable(getattr(cls, "from_pretrained", None)):
        refused = [key for key in options if not _accepts(cls.from_pretrained, key)]
        if refused:
            raise ValueError(
                f"judge_type {spec!r}: {cls.__name__}.from_pretrained does not take {', '.join(refused)}; unset "
                "those judge options or accept them (**kwargs)"
            )
        if device is not None and _accepts(cls.from_pretrained, "device"):
            options = {"device": device, **options}
        return cls.from_pretrained(name_or_path, **options)
    # A TRL-style judge: Class(judge), wrapped so that it has compare().
    from rlhf_pairs.judges.trl_adapter import as_judge

    if options:
        raise ValueError(
            f"judge_type {spec!r}: {cls.__name__} is a TRL-style judge built as {cls.__name__}(judge); it takes no "
            f"judge options, got {', '.join(options)}"
        )
    signature = inspect.signature(cls)
    try:
        signature.bind(name_or_path)
    except TypeError as err:
        try:  # TRL's judges were mostly built with no argument (`PairRMJudge()`, a `BasePairwiseJudge` subclass)
            signature.bind()
        except TypeError:
            raise ValueError(
                f"judge_type {spec!r}: a TRL-style judge is built as {cls.__name__}({name_or_path!r}) or "
                f"{cls.__name__}(), which its constructor refuses ({err})"
            ) from None
        if name_or_path:
            logger.info("%s takes no constructor argument: built as %s(), judge=%r not passed", spec, cls.__name__,
                        name_or_path)  # fmt: skip
        return as_judge(cls())
    return as_judge(cls(name_or_path))
