"""The ``rank`` job's runner, used by ``iterate`` too: rank every prompt's candidate responses with a pair judge,
sharded over processes, resumable.

Input: any datasets-loadable source with ``prompt`` (str or messages) and ``responses`` (list[str]), the RLHFlow
Online-RLHF generation format. Output: the input rows, in input order, plus ``best``, ``worst``, ``scores``,
``num_comparisons``, ``margin``, ``skipped`` and, for DPO, ``chosen``/``rejected`` (the best and worst responses;
``None`` for a skipped prompt).

The rows are cut into fixed shards of ``shard_size`` prompts; process k of K ranks shards k, k+K, ... and writes each
one atomically under ``<output>.shards/``. The main process then joins the shards in order into ``output``
(atomically). Because a shard's content does not depend on the number of processes and each prompt's ranking
depends only on (inputs, seed), the output is identical for 1 process or many. A killed run re-run with the same
arguments skips the finished shards; a run with different arguments over the same shards is refused.

A shard's bytes depend only on the shard: the judge's score cache is cleared before each shard, because a cache hit
from an earlier shard would change which pairs share a batch, and fp32 scores vary in their last bits with the
batch. Parquet output needs every input column to hold one Arrow type; an input whose column mixes types (e.g.
prompts that are strings in some rows and message lists in others) is refused before any ranking (use .jsonl).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rlhf_pairs.configs import JudgeArguments, RankConfig
from rlhf_pairs.data_utils import load_rows
from rlhf_pairs.ranking import rank_candidates_with_stats
from rlhf_pairs.utils.faults import kill_point
from rlhf_pairs.utils.hashing import sha256_json
from rlhf_pairs.utils.io import atomic_path, read_jsonl, write_jsonl_atomic

logger = logging.getLogger(__name__)


def _fingerprint(config: RankConfig, judge_args: JudgeArguments, rows: list[dict]) -> dict:
    """What a shard's content depends on; finished shards are reused only when it matches."""
    keys = ("ranking_method", "seed", "find_worst", "shard_size", "complete_margins")
    return {
        **judge_args.result_fields(),
        **{k: getattr(config, k) for k in keys},
        "rows": len(rows),
        "input_sha256": sha256_json(rows),
    }


OUTPUT_COLUMNS = ("best", "worst", "scores", "num_comparisons", "margin", "skipped", "chosen", "rejected")


def check_parquet_writable(rows: list[dict]) -> None:
    """Raise ``ValueError`` naming the column when an input column cannot be one Arrow column, so parquet output
    would fail; e.g. prompts that are strings in some rows and message lists in others. Columns the job
    overwrites (:data:`OUTPUT_COLUMNS`) are not checked."""
    import datasets
    import pyarrow as pa

    for column in dict.fromkeys(key for row in rows for key in row):
        if column in OUTPUT_COLUMNS:
            continue
        values = [row.get(column) for row in rows]
        try:
            datasets.Dataset.from_dict({column: values})  # the conversion _write_output makes
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
            first_row: dict[str, int] = {}
            for i, value in enumerate(values):
                if value is not None:
                    first_row.setdefault(type(value).__name__, i)
            seen = ", ".join(f"{kind} (row {i})" for kind, i in first_row.items())
            raise ValueError(
                f"cannot write parquet output: input column {column!r} holds values Arrow cannot put in one column "
                f"({seen}; {type(err).__name__}: {err}); write .jsonl output instead, which keeps every row as is"
            ) from None


def rank_rows(judge, rows: list[dict], method: str, seed: int, find_worst: bool, complete_margins: bool = False):
    """Rank a list of ``prompt``/``responses`` rows; returns (output rows, stats).

    With ``complete_margins``, rows whose best and worst never met get P(best beats worst) from one more batched
    ``judge.compare`` call, so ``margin`` is set for every ranked row with two distinct candidates.
    """
    for i, row in enumerate(rows):
        if "prompt" not in row or "responses" not in row:
            raise ValueError(f"row {i} must have 'prompt' and 'responses' columns, has {sorted(row)}")
    results, stats = rank_candidates_with_stats(
        judge,
        [r["prompt"] for r in rows],
        [r["responses"] for r in rows],
        method=method,
        seed=seed,
        find_worst=find_worst,
    )
    if complete_margins:
        missing = [i for i, r in enumerate(results) if r.skipped is None and r.margin is None and r.worst is not None]
        if missing:
            margins = judge.compare(
                [rows[i]["prompt"] for i in missing],
                [rows[i]["responses"][results[i].best] for i in missing],
                [rows[i]["responses"][results[i].worst] for i in missing],
            )
            for i, margin in zip(missing, margins):
                results[i].margin = margin
                results[i].num_comparisons += 1
            stats.compare_calls += 1
            stats.rows_judged += len(missing)
            stats.matches += len(missing)
    out = []
    for row, res in zip(rows, results):
        pairable = res.skipped is None and res.worst is not None
        out.append(
            {
                **row,
                "best": res.best,
                "worst": res.worst,
                "scores": res.scores,
                "num_comparisons": res.num_comparisons,
                "margin": res.margin,
                "skipped": res.skipped,
                "chosen": row["responses"][res.best] if pairable else None,
                "rejected": row["responses"][res.worst] if pairable else None,
            }
        )
    return out, stats


def rank_dataset(config: RankConfig, judge_args: JudgeArguments) -> dict:
    """Rank ``config.dataset_name`` into ``config.output`` with the judge of ``judge_args``, sharded over the
    processes of the launch and resumable by shard; returns the summary (on every process)."""
    from tqdm.auto import tqdm

    from rlhf_pairs.utils.distributed import process_state

    state = process_state()
    rows = load_rows(config.dataset_name, config.dataset_config, config.dataset_train_split)
    if Path(config.output).suffix == ".parquet":
        check_parquet_writable(rows)  # on every process, before any shard is ranked
    shard_dir = Path(str(config.output) + ".shards")
    fingerprint = _fingerprint(config, judge_args, rows)
    marker = shard_dir / "fingerprint.json"
    if state.is_main_process:
        shard_dir.mkdir(parents=True, exist_ok=True)
        if marker.exists() and json.loads(marker.read_text()) != fingerprint:
            if not config.overwrite:
                raise ValueError(
                    f"{shard_dir} holds shards made with other arguments or input "
                    f"({json.loads(marker.read_text())}); pass --overwrite to discard them or choose another output"
                )
            for stale in shard_dir.glob("shard-*.jsonl"):
                stale.unlink()
        marker.write_text(json.dumps(fingerprint, indent=1))
    state.wait_for_everyone()

    starts = list(range(0, len(rows), config.shard_size))
    shards = [shard_dir / f"shard-{k:05d}.jsonl" for k in range(len(starts))]
    mine = [k for k in range(len(starts)) if k % state.num_processes == state.process_index]
    todo = [k for k in mine if not shards[k].exists()]
    if config.max_shards is not None:
        todo = todo[: config.max_shards]
    judge = judge_args.load(state.device) if todo else None
    matches = rows_judged = 0
    start = time.perf_counter()
    for k in tqdm(todo, desc="ranking shards", disable=not state.is_main_process):
        if hasattr(judge, "clear_cache"):  # a hit from an earlier shard would make this shard depend on it
            judge.clear_cache()
        shard_rows, stats = rank_rows(
            judge,
            rows[starts[k] : starts[k] + config.shard_size],
            config.ranking_method,
            config.seed,
            config.find_worst,
            config.complete_margins,
        )
        write_jsonl_atomic(shards[k], shard_rows)
        kill_point("shard")
        matches += stats.matches
        rows_judged += stats.rows_judged
    elapsed = time.perf_counter() - start
    state.wait_for_everyone()

    done = all(shard.exists() for shard in shards)
    summary = {"prompts": len(rows), "shards": len(starts), "complete": done}
    if done:
        ranked = [row for shard in shards for row in read_jsonl(shard)]
        if len(ranked) != len(rows):
            raise RuntimeError(f"shards hold {len(ranked)} rows for {len(rows)} input rows; re-run with --overwrite")
        summary.update(
            ranked=sum(r["skipped"] is None for r in ranked),
            skipped=sum(r["skipped"] is not None for r in ranked),
            comparisons=sum(r["num_comparisons"] for r in ranked),
        )
        if state.is_main_process:
            _write_output(Path(config.output), ranked)
    summary.update(new_matches_this_process=matches, judge_rows_this_process=rows_judged)
    summary["pairs_per_second"] = matches / elapsed if elapsed > 0 and matches else 0.0
    if state.is_main_process:
        logger.info(
            "rank: %d prompts, %s ranked, %s skipped, %s comparisons over %d process(es), %.1f pairs/s (main process)%s",
            len(rows),
            summary.get("ranked", "?"),
            summary.get("skipped", "?"),
            summary.get("comparisons", "?"),
            state.num_processes,
            summary["pairs_per_second"],
            "" if done else f"; incomplete, re-run to finish ({config.output})",
        )
    return summary


def _write_output(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".jsonl":
        write_jsonl_atomic(path, rows)
        return
    import datasets

    with atomic_path(path) as tmp:
        datasets.Dataset.from_list(rows).to_parquet(str(tmp))
