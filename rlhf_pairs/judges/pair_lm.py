"""RLHFlow's pair preference LM: a causal LM that answers "A" or "B" after a comparison template.

The judge is :class:`~rlhf_pairs.judges.generative.GenerativeJudge` with the ``rlhflow`` template (one implementation
for every generative judge); the card's format is :class:`~rlhf_pairs.judges.formatting.PairPreferenceFormatter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlhf_pairs.judges.formatting import PAIR_TEMPLATE, PLAIN_CHAT_TEMPLATE, PairPreferenceFormatter
from rlhf_pairs.judges.generative import GenerativeJudge

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["PAIR_TEMPLATE", "PLAIN_CHAT_TEMPLATE", "PairPreferenceFormatter", "PairPreferenceJudge"]


class PairPreferenceJudge(GenerativeJudge):
    """RLHFlow's pair preference LM (``RLHFlow/pair-preference-model-LLaMA3-8B`` and models trained like it): a
    :class:`~rlhf_pairs.judges.generative.GenerativeJudge` whose template is ``rlhflow``. Per ordered pair,
    P(first is better) = softmax over the last-position logits of the tokens "A" and "B" (``temperature``, 1.0 by
    default); :meth:`compare` averages P(a) over both orders, exactly like the card."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> None:
        template = kwargs.setdefault("template", "rlhflow")
        if template != "rlhflow":
            raise ValueError(f"PairPreferenceJudge reads the rlhflow template; for {template!r} use GenerativeJudge")
        super().__init__(model, tokenizer, **kwargs)
