"""The ``train-pairrm`` job: fine-tune a PairRM (DeBERTa pair ranker) on ``prompt``/``chosen``/``rejected`` pairs.

Features:

- Loss: for each pair, f(chosen, rejected) and f(rejected, chosen) are computed in one batch (both orders, the
  judge's :class:`~rlhf_pairs.PairRMEncoder` input format) and the loss is logistic on their difference,
  ``-log sigmoid(f(c, r) - f(r, c))``: exactly the quantity ``PairRMJudge.compare`` turns into P(c better than r).
- Data: any prompt/chosen/rejected dataset (explicit prompt, whole conversations, or both as in
  ``HuggingFaceH4/ultrafeedback_binarized``), converted by the same code as ``train-pm`` with RLHFlow's filters
  (:func:`rlhf_pairs.trainer.pair_pm_data.preference_pairs`). Multi-turn prompts use the card's ``tokenize_conv_pair`` format.
  Batches are encoded by the collator on the fly: there is no tokenized dataset to prepare or cache.
- Held-out pairwise accuracy through the judge's scoring code, logged as ``eval_pairwise_accuracy``.
- The output directory keeps PairRM-hf's layout (``pretrained_model.*``/``head_layer.*`` keys, ``n_tasks``,
  ``drop_out`` and ``*_prefix_id`` config fields) and loads with ``PairRMJudge.from_pretrained``.

Assumptions: the model is a :class:`~rlhf_pairs.DebertaV2PairRM` checkpoint whose tokenizer has the ``<|source|>``,
``<|candidate1|>`` and ``<|candidate2|>`` tokens. RLHFlow comparison rows (a ``messages`` column without
``chosen``/``rejected``: the prompt exists only as rendered text) are refused.
"""

from __future__ import annotations

import logging

import torch
from transformers import Trainer

from rlhf_pairs.tokenization import pad_batch
from rlhf_pairs.trainer.pair_pm_trainer import HeldOutPairwiseAccuracy

logger = logging.getLogger(__name__)


class PairRMCollator:
    """Batches of pairs -> both orders, interleaved: rows 2i = (prompt, chosen, rejected), 2i+1 = (prompt, rejected,
    chosen), encoded by the judge's :class:`~rlhf_pairs.PairRMEncoder`, right-padded, with prefix positions and
    ``labels`` = 1 per pair (chosen is better)."""

    def __init__(self, encoder, pad_token_id: int):
        self.encoder = encoder
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        encoded = []
        for f in features:
            encoded.append(self.encoder.encode(f["prompt"], f["chosen"], f["rejected"]))
            encoded.append(self.encoder.encode(f["prompt"], f["rejected"], f["chosen"]))
        input_ids, attention_mask = pad_batch([ids for ids, _ in encoded], self.pad_token_id, left=False)
        positions = torch.tensor([pos for _, pos in encoded], dtype=torch.long).T
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "source_positions": positions[0],
            "cand1_positions": positions[1],
            "cand2_positions": positions[2],
            "labels": torch.ones(len(features)),
        }


class PairRMTrainer(HeldOutPairwiseAccuracy, Trainer):
    """``Trainer`` with PairRM's both-orders logistic loss and held-out pairwise accuracy (``eval_pairs`` =
    (prompts, chosen, rejected)); use with :class:`PairRMCollator`."""

    def __init__(self, *args, eval_pairs=None, encoder_kwargs: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_pairs = eval_pairs
        self.encoder_kwargs = encoder_kwargs or {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        # Rows come as (c, r), (r, c) per pair: the margin is what the judge's sigmoid reads.
        margin = outputs.logits.float().view(-1, 2)
        margin = margin[:, 0] - margin[:, 1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(margin, labels.to(margin.device).float())
        return (loss, {"logits": margin}) if return_outputs else loss

    def make_eval_judge(self, model):
        from rlhf_pairs.judges.pairrm import PairRMJudge

        return PairRMJudge(
            model,
            self.processing_class,
            batch_tokens=2**62,  # batches of exactly max_batch_size rows: equal counts on every process
            max_batch_size=self.args.per_device_eval_batch_size,
            show_progress=False,
            cache_size=0,
            **self.encoder_kwargs,
        )
