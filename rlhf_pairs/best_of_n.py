"""Best-of-n sampling: sample n candidate responses per prompt from a policy and keep the one a judge ranks best
(TRL's former ``BestOfNSampler``, with this package's judges and tournaments).

- :func:`best_of_n`: the library call, on a policy, tokenizer and judge already loaded, in this process.
- :func:`run_best_of_n`: the ``best-of-n`` job, sharded over the processes of an ``accelerate launch`` and
  resumable; its generation is the ``iterate`` job's (:func:`rlhf_pairs.generation.generate_sharded`) and its
  ranking the ``rank`` job's (:func:`rlhf_pairs.rank_dataset.rank_dataset`).

Ranking (:func:`rlhf_pairs.ranking.rank_candidates`): a pointwise judge (one with ``score_responses``, e.g. a reward
model, ``judge_type: reward_model``) ranks the n candidates by its scores, n rows scored and no match; a pair judge
plays a knockout, n - 1 matches for the best (``ranking_method: round_robin``: all n(n-1)/2 pairs). With
``find_worst`` the worst is found too (ceil(n/2) - 1 more knockout matches) and ``margin`` is P(best beats worst)
where the two met. What the judge reads of a prompt follows :func:`~rlhf_pairs.data_utils.prepare_prompt`, as in every
job: the policy sees the conversation as given (system turns included), the judge gets leading system turns per
``system_message``.

The job, for ``output`` ``best.jsonl``, works in ``best.jsonl.work/``:

1. ``candidates-<chunk>.jsonl``: ``num_candidates`` samples per prompt, in fixed chunks of ``shard_size`` prompts,
   chunk c sampled with a seed derived from (``seed``, c) by process c % K (HF ``generate``; with vLLM every chunk by
   the main process), so the candidates do not depend on the number of processes. ``fingerprint.json`` records what
   they depend on: the policy, the generation settings, the seed and the prompts.
2. ``candidates.jsonl`` (``prompt``, ``responses``), written by the main process once every chunk is there.
3. ``ranked.jsonl`` (and its ``ranked.jsonl.shards/``): the rank job on ``candidates.jsonl``, with its own
   fingerprint of the judge and ranking settings.
4. ``output``: one row per input row, in input order: the input row's columns, then ``prompt`` (the conversation
   the policy answered: a chat string already rendered with a template is given as its messages), ``response``
   (the best candidate), ``best``, ``worst``, ``responses``, ``scores``, ``rewards``, ``num_comparisons``,
   ``num_scored``, ``margin`` and ``skipped`` (see :mod:`rlhf_pairs.rank_dataset`); these replace input columns of
   the same names. Written atomically by the main process.

**Resume**: a killed or stopped run re-run with the same arguments keeps its finished generation chunks and ranking
shards; the output is byte-identical to an uninterrupted run's, and to a run on any number of processes (same device
type and dtype). Work made with other generation settings, another policy, seed or prompts (or another judge) is
refused, naming what changed, unless ``overwrite`` discards it. ``<output>.work/`` may be removed once ``output`` is
written. Kill points for resume tests: ``generate:shard`` (after each generation chunk) and ``rank:shard``
(:mod:`rlhf_pairs.utils.faults`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_pairs.configs import BestOfNConfig, JudgeArguments, RankConfig
from rlhf_pairs.data_utils import PROMPT_NOTES, Prompt, describe_prompt_notes, load_prompt_rows, prepare_prompt
from rlhf_pairs.generation import (
    GenerationSettings,
    generate_candidates,
    generate_sharded,
    hf_generator,
    vllm_generator,
)
from rlhf_pairs.rank_dataset import changed_keys, rank_dataset
from rlhf_pairs.ranking import METHODS, RankingResult, SupportsCompare, rank_candidates
from rlhf_pairs.utils.distributed import get_logger
from rlhf_pairs.utils.faults import scope, stop_on_signals
from rlhf_pairs.utils.hashing import changed_inputs, comparable, derived_seed, local_model_sha256, sha256_json
from rlhf_pairs.utils.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from rlhf_pairs.utils.locking import main_process_lock

if TYPE_CHECKING:
    from accelerate import PartialState
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import ModelConfig

    from rlhf_pairs.generation import Sampler

logger = get_logger(__name__)  # main process only (the job creates the process state first)


# ---------------------------------------------------------------------------------------------------------------------
# The library call
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class BestOfNResult:
    """One prompt's best-of-n.

    Attributes:
        prompt: the conversation the policy answered (the prompt as given; a chat string already rendered with a
            template as its messages, see :func:`~rlhf_pairs.data_utils.prepare_prompt`).
        response: the best candidate's text, ``candidates[best]``.
        best: its index in ``candidates``.
        candidates: the n sampled responses, in sampling order.
        ranking: the judge's ranking of ``candidates``: ``scores`` (a pointwise judge's scores, round robin's mean win
            probabilities, ``None`` for knockout), ``num_comparisons``, ``num_scored``, ``margin``, ``worst`` (with
            ``find_worst``) and ``skipped`` (a single candidate is not ranked: ``best`` is 0).
        sanitized: candidates from which a special-token string was removed
            (:func:`~rlhf_pairs.generation.generate_candidates`).
    """

    prompt: Prompt
    response: str
    best: int
    candidates: list[str]
    ranking: RankingResult
    sanitized: int = 0


def best_of_n(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    judge: SupportsCompare,
    prompts: Sequence[Prompt],
    n: int,
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    method: str = "knockout",
    find_worst: bool = False,
    system_message: str = "merge",
) -> list[BestOfNResult]:
    """Sample ``n`` responses per prompt from ``policy`` and keep the one ``judge`` ranks best; one
    :class:`BestOfNResult` per prompt, in input order.

    Args:
        policy: a causal LM (``generate``); ``tokenizer``: its tokenizer, with a chat template.
        judge: any object with ``compare(prompts, responses_a, responses_b)`` (a pair judge: a ``method``
            tournament) or also ``score_responses(prompts, responses)`` (a pointwise judge such as
            :class:`~rlhf_pairs.judges.RewardModelJudge`: ranked by its scores, whatever ``method`` is).
        prompts: strings or chat message lists ending with a user turn (leading system turns allowed).
        n: candidates per prompt (1 samples one and ranks nothing).
        max_new_tokens, temperature, top_p, batch_size: sampling (:class:`~rlhf_pairs.generation.GenerationSettings`;
            prompts per ``generate`` call); ``temperature=0`` is greedy and needs ``n=1``.
        seed: seeds the sampling (torch's RNG, set before the first batch) and the knockout brackets: the same
            inputs, settings, seed, device and dtype give the same results.
        method: ``"knockout"`` (n - 1 matches for the best) or ``"round_robin"`` (all n(n-1)/2 pairs, with scores).
        find_worst: also find the worst candidate (and the margin P(best beats worst) where the two met).
        system_message: what the judge gets of leading system turns: ``merge`` into the first user turn, ``drop``
            or ``error`` (refuse); the policy always sees them.

    Raises:
        ValueError: a malformed prompt (named by its index), ``n < 1``, an unknown ``method``, greedy decoding with
            ``n > 1``, or a judge that returns malformed probabilities or scores.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an int >= 1, got {n!r}")
    if method not in METHODS:
        raise ValueError(f"Unknown ranking method {method!r}; valid methods: {', '.join(METHODS)}")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"`prompts` must be a list of prompts, got {type(prompts).__name__}")
    conversations, judge_prompts = [], []
    for i, prompt in enumerate(prompts):
        conversation, judged, _ = prepare_prompt(prompt, system_message, f"prompts[{i}]")
        conversations.append(conversation)
        judge_prompts.append(judged)
    settings = GenerationSettings(n, max_new_tokens, temperature, top_p, batch_size)
    candidates, sanitized = generate_candidates(policy, tokenizer, conversations, settings, seed)
    rankings = rank_candidates(judge, judge_prompts, candidates, method=method, seed=seed, find_worst=find_worst)
    return [
        BestOfNResult(conversation, texts[ranking.best], ranking.best, texts, ranking, count)  # type: ignore[index, arg-type]  # n >= 1: a best
        for conversation, texts, ranking, count in zip(conversations, candidates, rankings, sanitized)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------------------

# BestOfNConfig fields the candidates depend on (with the policy and the prompts).
GENERATION_FIELDS = (
    "seed", "num_candidates", "max_new_tokens", "generation_temperature", "generation_top_p",
    "generation_batch_size", "generation_backend", "shard_size",
)  # fmt: skip
POLICY_FIELDS = ("model_name_or_path", "model_revision", "dtype", "attn_implementation")
CHUNK_TAG = "candidates"


def generation_fingerprint(config: BestOfNConfig, model_args: ModelConfig, prompts: list) -> dict:
    """What the generated candidates depend on: the policy (``ModelConfig``'s loading fields, a local path made
    absolute and its files' digest), :data:`GENERATION_FIELDS` and a digest of the prompts; as JSON reads it back."""
    policy: dict[str, Any] = {key: getattr(model_args, key, None) for key in POLICY_FIELDS}
    record: dict[str, Any] = {"policy": policy}
    if Path(policy["model_name_or_path"]).exists():
        policy["model_name_or_path"] = str(Path(policy["model_name_or_path"]).resolve())
        record["model_sha256"] = local_model_sha256(policy["model_name_or_path"])  # retrained in place: other work
    record |= {key: getattr(config, key) for key in GENERATION_FIELDS}
    record["prompts_sha256"] = sha256_json(prompts)
    return json.loads(json.dumps(record, default=str))


def load_prompts(config: BestOfNConfig) -> tuple[list[dict], list, Counter]:
    """(input rows, the conversation of each row's ``prompt_column``, the counts of each kind of change to a prompt)
    of ``config.dataset_name``, read with :func:`~rlhf_pairs.data_utils.load_prompt_rows` (counts also warned)."""
    rows, prompts, notes = load_prompt_rows(
        config.dataset_name, config.prompt_column, config.system_message, config.dataset_config,
        config.dataset_train_split,
    )  # fmt: skip
    for line in describe_prompt_notes(notes, config.system_message):
        logger.warning("%s: %s", config.dataset_name, line)
    return rows, prompts, notes


def run_best_of_n(config: BestOfNConfig, judge_args: JudgeArguments, model_args: ModelConfig) -> dict:
    """The ``best-of-n`` job (see the module docstring): best of ``num_candidates`` samples of the policy
    ``model_args.model_name_or_path`` per prompt of ``config.dataset_name``, ranked with the judge of ``judge_args``,
    into ``config.output``. All processes of a launch call it together; returns the summary on every process:
    ``prompts``, ``candidates``, ``ranked``, ``skipped``, ``comparisons``, ``scored``, ``sanitized``, ``complete``
    (``False`` after ``max_shards``: the counts of what is not finished are then absent), and the prompts the one
    prompt rule changed (``system_merged``, ``system_dropped``, ``rendered_chat_parsed``, ``rendered_chat_unparsed``).

    **Assumptions**: all processes see ``output``'s directory; the policy has a chat template.

    **Raises**: ``ValueError`` for a bad dataset (named, before the output is touched), a missing policy, or work in
    ``<output>.work/`` made with other arguments (unless ``overwrite``);
    :class:`~rlhf_pairs.utils.locking.OutputLocked` when another run uses ``output``; ``KeyboardInterrupt`` /
    ``SystemExit`` on SIGINT / SIGTERM (finished shards stay resumable)."""
    from rlhf_pairs.utils.distributed import process_state

    if not getattr(model_args, "model_name_or_path", None):
        raise ValueError("`model_name_or_path` (the policy to sample from) is required")
    state = process_state()
    with stop_on_signals():  # Ctrl-C and SIGTERM stop the run for sure; finished shards stay
        rows, prompts, notes = load_prompts(config)  # a bad input fails here, before the output is touched
        with main_process_lock(config.output, state):  # one run per output
            summary = _run_locked(config, judge_args, model_args, state, rows, prompts)
    return {**summary, **{key: notes[key] for key in PROMPT_NOTES}}


def _run_locked(
    config: BestOfNConfig,
    judge_args: JudgeArguments,
    model_args: ModelConfig,
    state: PartialState,
    rows: list[dict],
    prompts: list,
) -> dict:
    from accelerate.utils import broadcast_object_list

    cfg = config
    work = Path(f"{cfg.output}.work")
    logger.info(
        "best-of-n: %d prompts x %d candidates from %s, judge %s, over %d process(es)",
        len(prompts), cfg.num_candidates, model_args.model_name_or_path, judge_args.judge, state.num_processes,
    )  # fmt: skip

    # ------------------------------------------------------------------ finished work: reuse it only if still valid
    marker = work / "fingerprint.json"
    current = generation_fingerprint(cfg, model_args, prompts)
    found = [*sorted(work.glob(f"{CHUNK_TAG}-*.jsonl")), *[p for p in [work / "candidates.jsonl"] if p.exists()]]
    recorded = json.loads(marker.read_text()) if marker.exists() else None
    # A content digest only one side holds (a marker written before it) is left out of the comparison.
    old, now = comparable(recorded, current) if recorded is not None else (None, current)
    if found and old != now:  # every process decides the same from the same files
        if not cfg.overwrite:
            what = changed_keys(old, now) if old is not None else "no fingerprint.json"
            policy_files = {"model_sha256": f"the policy's files in {now['policy']['model_name_or_path']}"}
            retrained = (
                old is not None and old.get("policy") == now["policy"] and changed_inputs(old, now, policy_files)
            )
            made_with, reuse = (
                (f"another policy: {policy_files['model_sha256']} changed since", "restore them")
                if retrained
                else ("other arguments", "re-run with the original arguments")
            )
            raise ValueError(
                f"{work} holds {len(found)} generated file(s) made with {made_with} (changed: {what}); {reuse} to "
                "reuse them, pass --overwrite true to discard them, or choose another output"
            )
    state.wait_for_everyone()  # all have read the marker before the main process changes it
    if state.is_main_process and found and old == now and set(current) - set(recorded or {}):  # gains digests
        write_json_atomic(marker, current)
    elif state.is_main_process and old != now:
        for path in found:
            path.unlink()
        if found:  # the output of the discarded work is stale too
            Path(cfg.output).unlink(missing_ok=True)
        # Recorded before the first chunk; without chunks a recorded marker refuses nothing (a failed start).
        write_json_atomic(marker, current)
    state.wait_for_everyone()

    # ------------------------------------------------------------------ generation, chunk by chunk
    settings = GenerationSettings(
        cfg.num_candidates, cfg.max_new_tokens, cfg.generation_temperature, cfg.generation_top_p,
        cfg.generation_batch_size,
    )  # fmt: skip
    vllm = cfg.generation_backend == "vllm"
    policy = model_args.model_name_or_path

    def make_sampler() -> Sampler:
        if vllm:
            return vllm_generator(
                policy, settings, cfg.seed, cfg.vllm_tensor_parallel_size, cfg.vllm_gpu_memory_utilization
            )
        return hf_generator(model_args, None, policy, settings, state.device)

    todo = prompts
    if cfg.max_shards is not None:  # stop before the (max_shards + 1)-th missing chunk
        starts = range(0, len(prompts), cfg.shard_size)
        missing = [c for c in range(len(starts)) if not (work / f"{CHUNK_TAG}-{c:05d}.jsonl").exists()]
        if len(missing) > cfg.max_shards:
            todo = prompts[: starts[missing[cfg.max_shards]]]
    with scope("generate"):
        responses, sanitized = generate_sharded(
            make_sampler, todo, work, CHUNK_TAG, cfg.shard_size,
            chunk_seed=lambda c: derived_seed(cfg.seed, CHUNK_TAG, c), state=state,
            main_process_only=vllm, desc="best-of-n candidates",
        )  # fmt: skip
    summary = {"prompts": len(prompts), "complete": False}
    if len(todo) < len(prompts):
        logger.info("best-of-n: stopped after max_shards=%d generation shard(s); re-run to go on", cfg.max_shards)
        _drop_stale_output(cfg.output, state)
        return summary
    candidates = work / "candidates.jsonl"
    if state.is_main_process:
        write_jsonl_atomic(candidates, [{"prompt": p, "responses": r} for p, r in zip(prompts, responses)])  # type: ignore[arg-type]  # main: not None
    counts = [sanitized, sum(map(len, responses or []))]
    if state.num_processes > 1:
        broadcast_object_list(counts, from_process=0)
    summary.update(candidates=counts[1], sanitized=counts[0])
    state.wait_for_everyone()  # candidates.jsonl is written before any process reads it

    # ------------------------------------------------------------------ ranking: the rank job on candidates.jsonl
    ranked_path = work / "ranked.jsonl"
    rank_config = RankConfig(
        dataset_name=str(candidates),
        output=str(ranked_path),
        ranking_method=cfg.ranking_method,
        seed=cfg.seed,
        find_worst=cfg.find_worst,
        shard_size=cfg.shard_size,
        max_shards=cfg.max_shards,
        overwrite=cfg.overwrite,
        system_message=cfg.system_message,
    )
    with scope("rank"):
        ranking = rank_dataset(rank_config, judge_args)
    if not ranking["complete"]:
        logger.info("best-of-n: stopped after max_shards=%d ranking shard(s); re-run to go on", cfg.max_shards)
        _drop_stale_output(cfg.output, state)
        return summary
    summary.update({key: ranking[key] for key in ("ranked", "skipped", "comparisons", "scored")}, complete=True)

    # ------------------------------------------------------------------ output: the best per input row
    if state.is_main_process:
        ranked = read_jsonl(ranked_path)
        write_jsonl_atomic(cfg.output, [output_row(row, r) for row, r in zip(rows, ranked)])
    state.wait_for_everyone()
    logger.info(
        "best-of-n: %d prompts, %d candidates (%d sanitized), %d ranked, %d comparisons, %d responses scored -> %s",
        len(prompts), summary["candidates"], summary["sanitized"], summary["ranked"], summary["comparisons"],
        summary["scored"], cfg.output,
    )  # fmt: skip
    return summary


def _drop_stale_output(output: str, state: PartialState) -> None:
    """An unfinished run's ``output`` can only be an earlier run's (e.g. before ``overwrite`` with another judge):
    removed, so that no complete-looking file outlives the work it came from."""
    if state.is_main_process:
        Path(output).unlink(missing_ok=True)
    state.wait_for_everyone()


def output_row(row: dict, ranked: dict) -> dict:
    """An output row: the input ``row``'s columns, then the best of ``ranked`` (a rank job row) and its ranking."""
    responses, best = ranked["responses"], ranked["best"]
    return {
        **row,
        "prompt": ranked["prompt"],
        "response": responses[best] if best is not None else None,
        "best": best,
        "worst": ranked["worst"],
        "responses": responses,
        "scores": ranked["scores"],
        "rewards": ranked["rewards"],
        "num_comparisons": ranked["num_comparisons"],
        "num_scored": ranked["num_scored"],
        "margin": ranked["margin"],
        "skipped": ranked["skipped"],
    }
