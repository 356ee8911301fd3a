"""SPPO's loss on TRL's ``DPOTrainer``: self-play preference optimization with win-rate targets.

The loss is uclaml/SPPO's (``sppo/trainer.py``, ``SPPOTrainer.sppo_loss``, commit
5e61c4e90822fe526d8bbe1a50a6e85a85c30911), on the same log-ratios r = log pi(y|x) - log pi_ref(y|x) (summed over
the response tokens) that TRL 1.16's ``DPOTrainer`` computes:

- ``sppo``: ((r_w - (chosen_probs_win - 1/2) / beta)^2 + (r_l - (chosen_probs_lose - 1/2) / beta)^2) / 2;
- ``sppo_single``: ((r_w - (chosen_probs - 1/2) / beta)^2 + (r_l + (chosen_probs - 1/2) / beta)^2) / 2;

averaged over the batch. beta is 1/eta: it scales the targets, not the log-ratios (their recipe: 0.001). As in their
code, the probabilities enter as float64 (``torch.tensor(..., dtype=float)``), so the loss is computed in float64.
TRL's own ``sppo_hard`` is the hard-label variant without the division by 2.

Everything else is TRL's: tokenization (the prompt may be implicit in ``chosen``/``rejected`` conversations, SPPO's
file format), the reference model (a separate model, or the policy with its LoRA adapter disabled), DeepSpeed/FSDP
preparation, ``precompute_ref_log_probs``, MoE auxiliary loss and the logged ``rewards/*`` and ``logps/*`` metrics
(rewards = beta * r, as both TRL and SPPO log them; TRL's entropy, ``logits/*`` and token-accuracy metrics are not
computed). The three probability columns are kept through TRL's column removal and batched as float64 tensors by
:class:`ProbabilityCollator`. The loss computation overrides ``DPOTrainer._compute_loss`` (TRL 1.16), whose loss
types are a closed list.

**Assumptions**: text datasets with ``chosen``/``rejected`` (and an optional ``prompt``) plus the columns of
:data:`~rlhf_pairs.pairs.SPPO_PROBABILITY_COLUMNS`, e.g. :func:`rlhf_pairs.pairs.build_sppo_pairs`' rows or
uclaml/SPPO's ``synthetic_data_*_score`` parquet files.

**Raises** ``ValueError`` for a ``loss_type`` other than one of :data:`SPPO_LOSS_TYPES`, for options that change the
log-ratios away from SPPO's (``ld_alpha``, ``use_weighting``, an ``f_divergence_type``), for a vision dataset, and for
a training dataset without the probability columns.
"""

from __future__ import annotations

import torch
from trl import DPOTrainer

from rlhf_pairs.pairs import SPPO_PROBABILITY_COLUMNS

SPPO_LOSS_TYPES = ("sppo", "sppo_single")
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *SPPO_PROBABILITY_COLUMNS}


def is_sppo_loss(training_args) -> bool:
    """Whether a ``DPOConfig``'s ``loss_type`` names an SPPO loss (alone or among others)."""
    loss_types = training_args.loss_type
    loss_types = [loss_types] if isinstance(loss_types, str) else list(loss_types)
    return any(loss_type in SPPO_LOSS_TYPES for loss_type in loss_types)


def sppo_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    chosen_probs: torch.Tensor,
    chosen_probs_win: torch.Tensor,
    chosen_probs_lose: torch.Tensor,
    beta: float,
    loss_type: str = "sppo",
) -> torch.Tensor:
    """Per-example SPPO losses, in the operation order of their ``sppo_loss`` (see the module docstring).

    ``chosen_logratios``/``rejected_logratios``: log pi - log pi_ref of each pair's chosen and rejected response;
    the probability tensors are float64, as their trainer builds them. Raises ``ValueError`` for another
    ``loss_type``."""
    if loss_type == "sppo":
        loss_w = (chosen_logratios - (1 / beta) * (chosen_probs_win - 0.5)) ** 2
        loss_l = (rejected_logratios - (1 / beta) * (chosen_probs_lose - 0.5)) ** 2
    elif loss_type == "sppo_single":
        loss_w = (chosen_logratios - (1 / beta) * (chosen_probs - 0.5)) ** 2
        loss_l = (rejected_logratios + (1 / beta) * (chosen_probs - 0.5)) ** 2
    else:
        raise ValueError(f"SPPO loss_type must be one of {SPPO_LOSS_TYPES}, got {loss_type!r}")
    return (loss_w + loss_l) / 2


class ProbabilityCollator:
    """Wraps a preference collator: the probability columns leave the examples before it runs and come back as
    float64 tensors of shape (batch,) in the batch (their trainer reads them with ``dtype=float``)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        missing = [name for name in SPPO_PROBABILITY_COLUMNS if name not in examples[0]]
        if missing:
            raise ValueError(
                f"SPPO needs the columns {list(SPPO_PROBABILITY_COLUMNS)} in every training row; missing {missing}"
            )
        batch = self.collator([{k: v for k, v in ex.items() if k not in SPPO_PROBABILITY_COLUMNS} for ex in examples])
        for name in SPPO_PROBABILITY_COLUMNS:
            batch[name] = torch.tensor([float(ex[name]) for ex in examples], dtype=torch.float64)
        return batch


class SPPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with uclaml/SPPO's loss (``loss_type: sppo`` or ``sppo_single``); see the module
    docstring. Takes the arguments of ``DPOTrainer``."""

    _tag_names = ["trl", "dpo", "sppo"]
    _name = "SPPO"

    def __init__(self, model, ref_model=None, args=None, **kwargs):
        loss_types = getattr(args, "loss_type", None)
        loss_types = [loss_types] if isinstance(loss_types, str) else list(loss_types or [])
        if len(loss_types) != 1 or loss_types[0] not in SPPO_LOSS_TYPES:
            raise ValueError(
                f"SPPOTrainer needs `args`: a DPOConfig whose `loss_type` is one of {SPPO_LOSS_TYPES}, got "
                f"{loss_types or args}"
            )
        if args.ld_alpha is not None or args.use_weighting:
            raise ValueError(
                "SPPO's loss is on the summed log-ratios: `ld_alpha` and `use_weighting` would change them; unset them"
            )
        super().__init__(model, ref_model, args, **kwargs)
        if self._is_vision_dataset:
            raise ValueError("SPPOTrainer trains on text datasets only")
        columns = self.train_dataset.column_names or []  # None for an IterableDataset: checked per batch instead
        missing = [name for name in SPPO_PROBABILITY_COLUMNS if columns and name not in columns]
        if missing:
            raise ValueError(
                f"the training dataset has no {missing} column(s): SPPO trains on win-rate targets "
                "(rlhf_pairs.pairs.build_sppo_pairs, or uclaml/SPPO's compute_prob.py output)"
            )
        self.loss_type = loss_types[0]
        self.data_collator = ProbabilityCollator(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for name in SPPO_PROBABILITY_COLUMNS:  # kept by `remove_unused_columns`
            if name not in self._signature_columns:
                self._signature_columns.append(name)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        probabilities = {name: inputs[name] for name in SPPO_PROBABILITY_COLUMNS}
        inputs = {k: v for k, v in inputs.items() if k not in SPPO_PROBABILITY_COLUMNS}
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # Log-probabilities of the response tokens (the prompt's are 0 through the -100 labels), summed as TRL does.
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # the batch is [chosen..., rejected...]
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # TRL's reference forward: the reference model, or the policy with its adapter disabled
            reference = self.model if self.ref_model is None else self.ref_model
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(reference, inputs)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps

        device = chosen_logratios.device
        probabilities = {name: value.to(device) for name, value in probabilities.items()}
        losses = sppo_losses(chosen_logratios, rejected_logratios, **probabilities, beta=self.beta,
                             loss_type=self.loss_type)  # fmt: skip
        loss = losses.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())
        self._log_sppo_metrics(mode, inputs, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios)

        if return_outputs:  # as DPOTrainer: the fused LM head built no logits, so they are computed again
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _log_sppo_metrics(self, mode, inputs, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios):
        """TRL's ``rewards/*`` and ``logps/*`` (rewards = beta * log-ratio, as SPPO logs them) and token count."""
        gather = self.accelerator.gather
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
