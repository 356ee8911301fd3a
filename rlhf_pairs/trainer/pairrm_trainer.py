"""The ``train-pairrm`` job: fine-tune a PairRM (DeBERTa pair ranker) on preference pairs or ranked candidate lists.

Features:

- Data: any prompt/chosen/rejected dataset (explicit prompt, whole conversations, or both as in
  ``HuggingFaceH4/ultrafeedback_binarized``), converted by the same code as ``train-pm`` with RLHFlow's filters
  (:func:`rlhf_pairs.trainer.pair_pm_data.preference_pairs`); or candidate lists, ``prompt``/``responses``/``rewards``
  (the rank job's output, RLHFlow's annotated generations; :func:`candidate_sources`). Either way the data are
  *sources*, a prompt with scored candidates (a pair: chosen 1, rejected 0), and :func:`sample_pairs` draws up to
  ``pairs_per_source`` pairs of distinct candidates per source with the seed, ties skipped (llm-blender's
  ``all_pair`` sampling). Multi-turn prompts use the card's ``tokenize_conv_pair`` format. Batches are encoded by
  the collator on the fly: there is no tokenized dataset to prepare or cache.
- Loss (``loss_type``):

  - ``both_orders`` (default): f(better, worse) and f(worse, better) in one batch, logistic on their difference,
    ``-log sigmoid(f(b, w) - f(w, b))``: exactly the quantity ``PairRMJudge.compare`` turns into P(b better than w).
  - ``instructgpt`` (llm-blender's ``CrossCompareReranker`` objective): each pair once, in an order drawn with the
    seed, ``-log sigmoid(sign(score_a - score_b) * f(a, b))``. It calibrates f itself, not the judge's margin
    f(a, b) - f(b, a): where f is nearly antisymmetric that margin is about 2 f, and ``compare`` is sharper than the
    trained probabilities (``compare_at_temperature(..., 2.0)`` undoes it).

- Held-out pairwise accuracy through the judge's scoring code, logged as ``eval_pairwise_accuracy`` (pairs held out
  as they are; candidate lists by their best and worst candidates).
- The output directory keeps PairRM-hf's layout (``pretrained_model.*``/``head_layer.*`` keys, ``n_tasks``,
  ``drop_out`` and ``*_prefix_id`` config fields) and loads with ``PairRMJudge.from_pretrained``.

Assumptions: the model is a :class:`~rlhf_pairs.DebertaV2PairRM` checkpoint whose tokenizer has the ``<|source|>``,
``<|candidate1|>`` and ``<|candidate2|>`` tokens; with several tasks (``n_tasks`` > 1) the loss reads the logit the
judge reads, the mean over tasks (llm-blender averages a per-task loss). RLHFlow comparison rows (a ``messages``
column without ``chosen``/``rejected``: the prompt exists only as rendered text) are refused.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
from transformers import Trainer

from rlhf_pairs.configs import PAIRRM_LOSSES
from rlhf_pairs.data_utils import Prompt, load_split, validate_prompt
from rlhf_pairs.tokenization import pad_batch
from rlhf_pairs.trainer.console import quiet_trainer_console
from rlhf_pairs.trainer.pair_pm_data import (
    ConversionStats,
    PreferencePair,
    RowDropped,
    convert_rows,
    convert_splits,
    load_preference_splits,
)
from rlhf_pairs.trainer.pair_pm_trainer import HeldOutPairwiseAccuracy
from rlhf_pairs.utils.verbosity import filter_known_noise

# ---------------------------------------------------------------------------------------------------------------------
# Sources and sampled pairs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateSource:
    """A prompt and its distinct candidate responses with their scores (higher is better)."""

    prompt: Prompt
    responses: tuple[str, ...]
    scores: tuple[float, ...]

    @classmethod
    def from_pair(cls, pair: PreferencePair) -> CandidateSource:
        return cls(pair.prompt, (pair.chosen, pair.rejected), (1.0, 0.0))

    def best_and_worst(self) -> tuple[str, str]:
        """(the best-scored candidate, the worst-scored one), the first of each in case of ties."""
        best = max(range(len(self.scores)), key=self.scores.__getitem__)
        worst = min(range(len(self.scores)), key=self.scores.__getitem__)
        return self.responses[best], self.responses[worst]


def source_from_row(row: dict, scores_column: str = "rewards") -> CandidateSource:
    """A :class:`CandidateSource` of a candidate-list row (``prompt``, ``responses``, ``rewards``); raises
    ``RowDropped`` with the reason. Repeated responses are kept once, with their first score (llm-blender removes
    duplicate candidates); a row left with fewer than two candidates or with all scores equal has no preference."""
    prompt, responses, scores = row.get("prompt"), row.get("responses"), row.get(scores_column)
    try:
        validate_prompt(prompt)
    except ValueError:
        raise RowDropped("not_alternating") from None
    turns = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    if not isinstance(responses, (list, tuple)):
        raise RowDropped("not_text")
    if (
        not isinstance(scores, (list, tuple))
        or len(responses) != len(scores)
        or any(not isinstance(s, (int, float)) or isinstance(s, bool) or s != s for s in scores)
    ):
        raise RowDropped("bad_scores")  # missing, NaN or not one per response
    if any(not isinstance(r, str) for r in responses):
        raise RowDropped("not_text")
    if any(not t.strip() for t in turns) or any(not r.strip() for r in responses):
        raise RowDropped("empty_turn")
    unique: dict[str, float] = {}
    for response, score in zip(responses, scores):
        unique.setdefault(response, float(score))
    if len(unique) < 2 or len(set(unique.values())) < 2:
        raise RowDropped("no_preference")
    return CandidateSource(prompt, tuple(unique), tuple(unique.values()))


def candidate_sources(rows: Iterable[dict]) -> tuple[list[CandidateSource], ConversionStats]:
    """Filtered :class:`CandidateSource` s of candidate-list rows and the counts of what was dropped and why
    (``ConversionStats.pairs`` counts sources)."""
    return convert_rows(rows, source_from_row)


def sample_pairs(
    sources: Sequence[CandidateSource], pairs_per_source: int, loss_type: str = "both_orders", seed: int = 0
) -> list[dict]:
    """Training rows ``{"prompt", "first", "second", "label"}`` (``label`` 1.0 when ``first`` is the better one):
    per source, up to ``pairs_per_source`` pairs of candidates with different scores, drawn with ``seed`` without
    replacement (ties are never drawn). With ``both_orders`` each pair is written better-first (the collator adds
    the other order); with ``instructgpt`` in an order drawn with ``seed``, as llm-blender's ``sampling`` flips each
    pair. A chosen/rejected source gives its one pair."""
    if loss_type not in PAIRRM_LOSSES:
        raise ValueError(f"`loss_type` must be one of {PAIRRM_LOSSES}, got {loss_type!r}")
    rng = random.Random(seed)
    rows = []
    for source in sources:
        scores = source.scores
        candidates = [(i, j) for i, j in combinations(range(len(scores)), 2) if scores[i] != scores[j]]
        rng.shuffle(candidates)
        for i, j in candidates[:pairs_per_source]:
            better, worse = (i, j) if scores[i] > scores[j] else (j, i)
            flip = loss_type == "instructgpt" and rng.random() < 0.5
            first, second = (worse, better) if flip else (better, worse)
            rows.append(
                {
                    "prompt": source.prompt,
                    "first": source.responses[first],
                    "second": source.responses[second],
                    "label": 0.0 if flip else 1.0,
                }
            )
    return rows


def load_sources(config, seed: int) -> tuple[list[CandidateSource], list[CandidateSource], ConversionStats]:
    """(training sources, held-out sources, the train split's :class:`ConversionStats`) of a ``train-pairrm`` config:
    candidate lists when the train split has a ``responses`` column, else preference pairs
    (:func:`~rlhf_pairs.trainer.pair_pm_data.load_preference_splits`, which refuses RLHFlow comparison rows). The
    held-out sources are the test split when one is named, else ``eval_size`` sources of the train split drawn with
    ``seed``; ``max_train_pairs``/``max_eval_pairs`` cut the source lists."""
    rows = load_split(config.dataset_name, config.dataset_config, config.dataset_train_split)
    if "responses" not in rows.column_names:
        pairs, eval_pairs, stats = load_preference_splits(config, seed, "preference", trainer="PairRM", rows=rows)
        return [CandidateSource.from_pair(p) for p in pairs], [CandidateSource.from_pair(p) for p in eval_pairs], stats
    return convert_splits(rows, config, seed, candidate_sources, what="sources")


# ---------------------------------------------------------------------------------------------------------------------
# Batches and loss
# ---------------------------------------------------------------------------------------------------------------------


class PairRMCollator:
    """Rows of :func:`sample_pairs` -> the judge's :class:`~rlhf_pairs.PairRMEncoder` inputs, right-padded, with
    prefix positions and ``labels`` (one per pair: 1.0 when ``first`` is better).

    ``both_orders`` (default): rows 2i = (prompt, first, second), 2i+1 = (prompt, second, first), interleaved;
    otherwise one row per pair, (prompt, first, second)."""

    def __init__(self, encoder, pad_token_id: int, both_orders: bool = True):
        self.encoder = encoder
        self.pad_token_id = pad_token_id
        self.both_orders = both_orders

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        encoded = []
        for f in features:
            encoded.append(self.encoder.encode(f["prompt"], f["first"], f["second"]))
            if self.both_orders:
                encoded.append(self.encoder.encode(f["prompt"], f["second"], f["first"]))
        input_ids, attention_mask = pad_batch([ids for ids, _ in encoded], self.pad_token_id, left=False)
        positions = torch.tensor([pos for _, pos in encoded], dtype=torch.long).T
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "source_positions": positions[0],
            "cand1_positions": positions[1],
            "cand2_positions": positions[2],
            "labels": torch.tensor([float(f["label"]) for f in features]),
        }


class PairRMTrainer(HeldOutPairwiseAccuracy, Trainer):
    """``Trainer`` with a PairRM loss (``loss_type``, see the module docstring) and held-out pairwise accuracy
    (``eval_pairs`` = (prompts, chosen, rejected)); use with :class:`PairRMCollator` built with
    ``both_orders = loss_type == "both_orders"``. It prints its step bar and a line per evaluation and at the end, not
    its log records (:mod:`rlhf_pairs.trainer.console`)."""

    def __init__(
        self, *args, eval_pairs=None, encoder_kwargs: dict | None = None, loss_type: str = "both_orders", **kwargs
    ):
        if loss_type not in PAIRRM_LOSSES:
            raise ValueError(f"`loss_type` must be one of {PAIRRM_LOSSES}, got {loss_type!r}")
        filter_known_noise()  # before the build: accelerate imports DeepSpeed there
        super().__init__(*args, **kwargs)
        quiet_trainer_console(self)
        self.eval_pairs = eval_pairs
        self.encoder_kwargs = encoder_kwargs or {}
        self.loss_type = loss_type

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        margin = outputs.logits.float()
        if self.loss_type == "both_orders":
            # Rows come as (a, b), (b, a) per pair: the margin is what the judge's sigmoid reads.
            margin = margin.view(-1, 2)
            margin = margin[:, 0] - margin[:, 1]
        # BCE with target 1 (first better) or 0 is -log sigmoid(sign * margin), sign = +1 or -1.
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
