"""The ``train-pm`` job: train a pair preference LM (RLHFlow's recipe) with TRL's ``SFTTrainer``.

Features:

- Data: ``RLHFlow/pair_preference_model_dataset`` (``messages`` rows) by default, or any ``prompt``/``chosen``/
  ``rejected`` dataset, converted with RLHFlow's filters into comparisons in both orders (or one seeded random
  order per pair, ``orders: random``, or each RLHFlow row in its own order, ``orders: as_is``). See
  :mod:`rlhf_pairs.trainer.pair_pm_data`. In a multi-process launch the main process of each node prepares the
  data first and the tokenized comparisons are cached (``rlhf_pairs/`` in the datasets cache, keyed by their
  inputs), so the other processes load them instead of tokenizing again.
- Loss on the label token only ("A"/"B"; ``loss_on_eot`` adds the end-of-turn token): the dataset is tokenized here
  with the judge's formatter and handed to ``SFTTrainer`` pre-tokenized with a ``labels`` column, which TRL uses as
  is. The training sequence is exactly the inference input of :class:`~rlhf_pairs.PairPreferenceJudge` + the label.
  ``label_format: rlhflow`` appends RLHFlow's assistant turn instead (header, label, end of turn; axolotl's mask).
- Over-long comparisons (``overlong``): truncated like the judge truncates (default) or dropped like axolotl drops
  them; the summary counts them either way.
- Packing (TRL's ``packing: true``, best-fit decreasing): comparisons are packed into ``max_length``-token rows,
  flattened padding-free with position ids restarting at 0 per comparison, so that transformers' attention keeps
  each comparison to itself. :func:`check_packing` verifies that on the loaded model before training.
- Pad token: Llama-3 has none. A pad token that is also EOS/EOT (RLHFlow's ``pad = eos``) makes every
  ``input_ids != pad`` mask drop the end-of-turn token the judge reads, so :func:`ensure_pad_token` uses an unused
  reserved token (``<|finetune_right_pad_id|>``, ``<|reserved_special_token_0|>``) or adds ``<|pad|>``.
- Held-out pairwise accuracy, both orders, computed through the judge's own scoring code (the number a user gets
  from ``PairPreferenceJudge.compare``), logged as ``eval_pairwise_accuracy`` at every evaluation.
- LoRA (``use_peft``): the adapter is saved under ``output_dir/adapter`` and, with ``merge_lora`` (default), the merged
  model in ``output_dir``, so that ``PairPreferenceJudge.from_pretrained(output_dir)`` works for both variants.

Assumptions: the tokenizer encodes "A" and "B" as single tokens and has a chat template (checked by the formatter).
Every process evaluates an equal share of the held-out pairs in equal batches (DeepSpeed ZeRO-3 needs every rank to
run the same number of forwards).

Raises ``ValueError`` for an unknown ``orders``, ``orders: as_is`` on prompt/chosen/rejected rows, a dataset
without the expected columns, an ``eval_size`` that leaves no training pair, ``packing_strategy: wrapped``, or an
attention implementation that lets packed comparisons see each other.
"""

from __future__ import annotations

import torch
from trl import ModelConfig, SFTTrainer

from rlhf_pairs.trainer.console import quiet_trainer_console
from rlhf_pairs.trainer.pair_pm_data import (
    RenderedContextFormatter,
)
from rlhf_pairs.utils.distributed import get_logger
from rlhf_pairs.utils.verbosity import filter_known_noise
from rlhf_pairs.win_rate import pair_outcome

logger = get_logger(__name__)  # main process only (rlhf_pairs.utils.distributed)

# Unused special tokens that a Llama-3-family vocabulary already holds, in order of preference.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|pad|>", "<pad>", "[PAD]")
ADDED_PAD_TOKEN = "<|pad|>"
EOT_CANDIDATES = ("<|eot_id|>", "<end_of_turn>", "<|im_end|>")
# A packed comparison's logits may move this much (relative to their scale) with its neighbour changed: float
# rounding is far below it (exact zeros in practice), attention to a neighbour far above.
PACKED_LEAK_TOLERANCE = 1e-3


def ensure_pad_token(tokenizer, model=None) -> str:
    """Give ``tokenizer`` (and ``model.config``) a pad token that is none of EOS, BOS, the end-of-turn tokens, "A"
    or "B"; returns it. Keeps a safe existing pad token, else reuses an unused reserved token, else adds
    ``<|pad|>`` and resizes the model's embeddings."""
    protected = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    protected |= {tokenizer.convert_tokens_to_ids(t) for t in EOT_CANDIDATES if t in tokenizer.get_vocab()}
    protected |= {ids[0] for ids in (tokenizer.encode(x, add_special_tokens=False) for x in ("A", "B")) if ids}
    protected.discard(None)
    if tokenizer.pad_token is None or tokenizer.pad_token_id in protected:
        vocab = tokenizer.get_vocab()
        found = next((t for t in PAD_CANDIDATES if t in vocab and vocab[t] not in protected), None)
        if found is not None:
            tokenizer.pad_token = found
        else:
            tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
            if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                filter_known_noise()  # transformers' advice on mean_resizing: the line below says what it did
                model.resize_token_embeddings(len(tokenizer))
                logger.info(
                    "added the pad token %r: embeddings resized to %d rows, the new row drawn around the old rows' "
                    "mean (transformers' mean_resizing)",
                    ADDED_PAD_TOKEN,
                    len(tokenizer),
                )
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer.pad_token


def packed_attention_leak(model) -> float | None:
    """How much packing changes a comparison's logits on ``model``; ``None`` when it cannot be measured here.

    Two rows are packed the way TRL's padding-free collator lays out a batch (no attention mask, position ids that
    restart at 0 per sequence, ``cu_seq_lens``): [s1, s2] and [s1', s2], with s1' another random sequence of s1's
    length. If every sequence only attends to itself, s2's logits are the same in both (the masked keys contribute
    exact zeros); the result is their largest difference relative to the logits' scale. Not measurable: parameters
    partitioned by DeepSpeed ZeRO-3 (a forward outside the engine), or flash-attention kernels on a model not on a
    GPU (transformers gives them the collator's ``cu_seq_lens``; not tested here).
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    params = list(model.parameters())
    implementation = str(getattr(model.config, "_attn_implementation", None))
    if any(hasattr(p, "ds_id") for p in params):
        return None
    device = params[0].device
    if "flash" in implementation and device.type != "cuda":
        return None
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    first, other, second = (torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (6, 6, 9))
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    was_training = model.training
    model.eval()
    try:
        logits = []
        for before in (first, other):
            batch = collator([{"input_ids": before}, {"input_ids": second}])
            batch.pop("labels")
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with torch.no_grad():
                logits.append(model(**batch, use_cache=False).logits[0, len(before) :].float())
    finally:
        model.train(was_training)
    return float((logits[0] - logits[1]).abs().max() / logits[0].abs().max().clamp(min=1.0))


def check_packing(model, args) -> bool:
    """Refuse packed training that would let comparisons see each other; returns whether isolation was verified.

    ``args`` is the ``SFTConfig``: ``packing_strategy: wrapped`` (cuts comparisons across rows, and TRL keeps the
    attention mask, so packed comparisons attend to each other) is refused; otherwise :func:`packed_attention_leak`
    must be 0 up to float rounding. Does nothing without ``packing``/``padding_free``. Raises ``ValueError``.
    """
    if not (args.packing or args.padding_free):
        return False
    if args.packing and args.packing_strategy == "wrapped":
        raise ValueError(
            "`packing_strategy: wrapped` cuts comparisons at row ends and lets packed comparisons attend to each "
            "other; pack whole comparisons with `packing_strategy: bfd` (TRL's default)"
        )
    implementation = getattr(model.config, "_attn_implementation", None)
    leak = packed_attention_leak(model)
    if leak is None:
        logger.warning(
            "packing: cannot verify here that attention %r keeps packed comparisons apart (DeepSpeed ZeRO-3 "
            "parameters, or flash-attention on a model outside a GPU); transformers separates them by the "
            "collator's position ids / cu_seq_lens",
            implementation,
        )
        return False
    if leak > PACKED_LEAK_TOLERANCE:
        raise ValueError(
            f"packing: attention implementation {implementation!r} of {type(model).__name__} lets packed "
            f"comparisons attend to each other (a comparison's logits change by {leak:.3g} of their scale with the "
            "comparison packed before it); use `attn_implementation: sdpa` (or eager, flash_attention_2) with a "
            "model whose attention builds its mask from position ids, or `packing: false`"
        )
    logger.info("packing: attention %r keeps packed comparisons apart (checked, %.2g)", implementation, leak)
    return True


def end_of_turn_id(tokenizer, eot_token: str | None = None) -> int:
    """The id of ``eot_token``, or of the first known end-of-turn token in the vocabulary, or of EOS."""
    vocab = tokenizer.get_vocab()
    if eot_token is not None:
        if eot_token not in vocab:
            raise ValueError(f"`eot_token` {eot_token!r} is not in the tokenizer's vocabulary")
        return vocab[eot_token]
    return next((vocab[t] for t in EOT_CANDIDATES if t in vocab), tokenizer.eos_token_id)


# ---------------------------------------------------------------------------------------------------------------------
# Held-out pairwise accuracy, through the judge
# ---------------------------------------------------------------------------------------------------------------------


def heldout_pairwise_metrics(
    judge, prompts: list, chosen: list[str], rejected: list[str], process_index: int = 0, num_processes: int = 1
) -> dict[str, float]:
    """Pairwise metrics of ``judge`` on held-out pairs, both orders, as ``judge.compare`` scores them.

    Returns ``pairwise_accuracy`` (1 when P(chosen better) > 0.5, 0.5 at exactly 0.5, as in the RLHFlow card's
    evaluation), ``pairwise_prob_chosen`` (mean P) and ``pairwise_pairs``. With several processes each one scores an
    equal share (padded with repeats, so all run the same number of batches) and the results are gathered.
    """
    n = len(prompts)
    share = -(-n // num_processes)
    mine = list(range(process_index, n, num_processes)) or [0]
    mine += mine[-1:] * (share - len(mine))
    # The same scoring and combination as `PairwiseJudge.compare`, without its cache (the model changes in training).
    forward, backward = judge.score_both_orders(
        [prompts[i] for i in mine], [chosen[i] for i in mine], [rejected[i] for i in mine]
    )
    probs = judge.combine_orders(forward, backward).tolist()
    local = list(zip(mine, probs))
    if num_processes > 1:
        from accelerate.utils import gather_object

        local = gather_object(local)
    by_index = dict(local)
    values = [by_index[i] for i in range(n)]
    correct = [pair_outcome(p) for p in values]
    return {
        "pairwise_accuracy": sum(correct) / max(n, 1),
        "pairwise_prob_chosen": sum(values) / max(n, 1),
        "pairwise_pairs": float(n),
    }


class HeldOutPairwiseAccuracy:
    """Trainer mixin: every evaluation also reports pairwise accuracy on ``eval_pairs`` through ``make_eval_judge``.

    ``eval_pairs`` is ``(prompts, chosen, rejected)``; the metrics join the evaluation's own (``eval_loss``, ...) in
    one log entry, prefixed like them (``eval_pairwise_accuracy``), so ``metric_for_best_model`` can use them.
    """

    eval_pairs: tuple[list, list[str], list[str]] | None = None

    def make_eval_judge(self, model):
        raise NotImplementedError

    def pairwise_metrics(self) -> dict[str, float]:
        prompts, chosen, rejected = self.eval_pairs
        judge = self.make_eval_judge(self.model)
        with torch.no_grad(), self.autocast_smart_context_manager():
            return heldout_pairwise_metrics(
                judge, prompts, chosen, rejected, self.accelerator.process_index, self.accelerator.num_processes
            )

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        if self.eval_pairs is not None and len(self.eval_pairs[0]):
            output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self.pairwise_metrics().items()})
        return output


class PairPreferenceSFTTrainer(HeldOutPairwiseAccuracy, SFTTrainer):
    """TRL's ``SFTTrainer`` that also reports held-out pairwise accuracy of the model as a
    :class:`~rlhf_pairs.PairPreferenceJudge`.

    ``eval_pairs``: (rendered contexts, chosen, rejected); ``judge_max_length``: the judge's truncation length (the
    training sequences' prefix budget, so that evaluation reads what training wrote). It prints its step bar and a
    line per evaluation and at the end, not its log records (:mod:`rlhf_pairs.trainer.console`).
    """

    def __init__(self, *args, eval_pairs=None, judge_max_length: int | None = None, **kwargs):
        filter_known_noise()  # before the build: accelerate imports DeepSpeed there
        super().__init__(*args, **kwargs)
        quiet_trainer_console(self)
        self.eval_pairs = eval_pairs
        self.judge_max_length = judge_max_length

    def make_eval_judge(self, model):
        from rlhf_pairs.judges.pair_lm import PairPreferenceJudge

        tokenizer = self.processing_class
        judge = PairPreferenceJudge(
            model,
            tokenizer,
            max_length=self.judge_max_length,
            # Batches of exactly max_batch_size rows, no prefix sharing (its forwards depend on the rows): every
            # process runs the same number of forwards, which ZeRO-3's parameter gathering needs.
            batch_tokens=2**62,
            max_batch_size=self.args.per_device_eval_batch_size,
            share_prefix=False,
            show_progress=False,
            cache_size=0,
        )
        # The held-out "prompts" are rendered contexts (RLHFlow rows have no other form); same encode code path.
        judge.formatter = RenderedContextFormatter(tokenizer, max_length=self.judge_max_length)
        return judge


def save_merged_lora(model_args: ModelConfig, adapter_dir: str, output_dir: str, training_args=None) -> None:
    """Reload the base model, apply the same pad-token handling, merge the adapter and save model + tokenizer to
    ``output_dir`` (a plain checkpoint that ``PairPreferenceJudge.from_pretrained`` loads)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from rlhf_pairs.utils.distributed import zero3_init_disabled
    from rlhf_pairs.utils.models import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with zero3_init_disabled():  # whole weights, on this process alone (a ZeRO-3 load would wait for the others)
        base = load_causal_lm(model_args, training_args)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    base.config.pad_token_id = tokenizer.pad_token_id
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
