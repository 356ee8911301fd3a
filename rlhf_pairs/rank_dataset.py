"""The ``rank`` job's runner, used by ``iterate`` and ``best-of-n`` too: rank every prompt's candidate responses with
a judge, sharded over processes, resumable.

Input: any datasets-loadable source with ``prompt`` (str or messages) and ``responses`` (list[str]), the RLHFlow
Online-RLHF generation format, also its older LMFlow files (``{"type": ..., "instances": [...]}``, see
:func:`~rlhf_pairs.data_utils.load_rows`). Output: the input rows, in input order and with their ``prompt`` as given,
plus ``best``, ``worst``, ``scores``, ``rewards`` (one per response, RLHFlow's annotation column: argmax = best,
argmin = worst, see :func:`~rlhf_pairs.pairs.ranking_rewards`; with a pointwise judge such as a reward model, its
own scores), ``num_comparisons``, ``num_scored`` (responses a pointwise judge scored: it ranks by sorting, with no
matches, see :mod:`rlhf_pairs.ranking`), ``margin``, ``skipped`` and, for
DPO, ``chosen``/``rejected`` (the best and worst responses in TRL's preference format matching the prompt, see
:func:`~rlhf_pairs.pairs.preference_columns`; ``None`` for a skipped prompt) and, with ``prob_matrix``, the
``prob_matrix`` column (per prompt ``P[i][j]`` = P(response i beats response j), diagonal 0.5: SPPO's input, see
:mod:`rlhf_pairs.ranking`; ``None`` for a skipped prompt).

What the judge reads of a prompt follows :func:`~rlhf_pairs.data_utils.prepare_prompt`, as in every job: leading
system turns merged into the first user turn (``system_message``: ``merge``, ``drop`` or ``error``), a chat string
already rendered with a Llama-3, ChatML or Gemma template parsed back into messages; the summary counts each.

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
import time
from collections import Counter
from pathlib import Path

from rlhf_pairs.configs import JudgeArguments, RankConfig
from rlhf_pairs.data_utils import PROMPT_NOTES, describe_prompt_notes, load_rows, prepare_prompt
from rlhf_pairs.pairs import preference_columns, ranking_rewards
from rlhf_pairs.ranking import check_probabilities, rank_candidates_with_stats
from rlhf_pairs.utils.distributed import get_logger, summed_judge_usage
from rlhf_pairs.utils.faults import kill_point, stop_on_signals
from rlhf_pairs.utils.hashing import changed_inputs, comparable, sha256_json
from rlhf_pairs.utils.io import atomic_path, read_jsonl, write_json_atomic, write_jsonl_atomic
from rlhf_pairs.utils.locking import main_process_lock
from rlhf_pairs.utils.verbosity import show_progress_bars

logger = get_logger(__name__)  # logs on the main process only (the state exists: process_state() runs first)


def fingerprint(config: RankConfig, judge_args: JudgeArguments) -> dict:
    """The arguments a shard's content depends on (a local judge path made absolute by ``result_fields``). The input
    rows are checked shard by shard instead (:func:`_shard_is_current`). ``system_message`` is recorded only when it
    is not the default, so runs recorded before it existed (which had no system turns) still resume."""
    keys = ("ranking_method", "seed", "find_worst", "shard_size", "complete_margins")
    record = {**judge_args.result_fields(), **{k: getattr(config, k) for k in keys}}
    if config.system_message != "merge":
        record["system_message"] = config.system_message
    if config.prob_matrix:  # recorded only when asked, so shards written before the option still resume
        record["prob_matrix"] = True
    return record


def changed_keys(recorded: dict, current: dict, prefix: str = "") -> str:
    """``key (old -> new)`` for every key whose value differs, comma-separated; nested dicts by their dotted keys
    (``training.learning_rate (1e-05 -> 5e-05)``)."""
    changes = []
    for k in sorted(set(recorded) | set(current), key=str):
        old, new = recorded.get(k), current.get(k)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes.append(changed_keys(old, new, f"{prefix}{k}."))
        else:
            changes.append(f"{prefix}{k} ({old!r} -> {new!r})")
    return ", ".join(changes)


def judge_file_inputs(fields: dict) -> dict[str, str]:
    """The judge's content digests in ``fields`` (:meth:`~rlhf_pairs.configs.JudgeArguments.result_fields`) -> the
    files each digests, for the messages refusing work made with other ones."""
    return {
        "judge_sha256": f"the judge's files in {fields['judge']}",
        "judge_template_sha256": f"the judge template {fields.get('judge_template')}",
    }


def check_rank_rows(rows: list[dict], where, system_message: str = "merge") -> tuple[list, Counter]:
    """The judge's prompt of every row and the counts of :data:`~rlhf_pairs.data_utils.PROMPT_NOTES` (system turns
    merged or dropped, rendered chat strings parsed or not), see :func:`~rlhf_pairs.data_utils.prepare_prompt`.

    Raises ``ValueError`` for the first row that cannot be ranked, located by ``where(i)`` (a file line when the
    input is a local JSON-lines file): every row needs ``prompt`` (a string or chat turns ending with a user turn,
    led by system turns unless ``system_message`` is ``"error"``) and ``responses`` (a list of strings). Checked
    before the first judge call, so a bad last row does not fail a run hours in."""
    judge_prompts, counts = [], Counter(dict.fromkeys(PROMPT_NOTES, 0))
    for i, row in enumerate(rows):
        if "prompt" not in row or "responses" not in row:
            raise ValueError(f"{where(i)}: a row needs 'prompt' and 'responses' columns, it has {sorted(row)}")
        _, judged, notes = prepare_prompt(row["prompt"], system_message, f"{where(i)}: prompt")
        judge_prompts.append(judged)
        counts.update(notes)
        responses = row["responses"]
        if isinstance(responses, str) or not isinstance(responses, list):
            raise ValueError(f"{where(i)}: 'responses' must be a list of strings, got {type(responses).__name__}")
        for j, text in enumerate(responses):
            if not isinstance(text, str):
                raise ValueError(f"{where(i)}: responses[{j}] must be a string, got {type(text).__name__}")
    return judge_prompts, counts


OUTPUT_COLUMNS = (
    "best", "worst", "scores", "rewards", "num_comparisons", "num_scored", "margin", "skipped", "chosen", "rejected",
)  # fmt: skip
OPTIONAL_OUTPUT_COLUMNS = ("prob_matrix",)  # written only when asked for


def check_parquet_writable(rows: list[dict]) -> None:
    """Raise ``ValueError`` naming the column when an input column cannot be one Arrow column, so parquet output
    would fail; e.g. prompts that are strings in some rows and message lists in others. Columns the job
    overwrites (:data:`OUTPUT_COLUMNS`, :data:`OPTIONAL_OUTPUT_COLUMNS`) are not checked."""
    import datasets
    import pyarrow as pa

    for column in dict.fromkeys(key for row in rows for key in row):
        if column in OUTPUT_COLUMNS or column in OPTIONAL_OUTPUT_COLUMNS:
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


def rank_rows(
    judge,
    rows: list[dict],
    method: str,
    seed: int,
    find_worst: bool,
    complete_margins: bool = False,
    judge_prompts: list | None = None,
    prob_matrix: bool = False,
):
    """Rank a list of ``prompt``/``responses`` rows; returns (output rows, stats).

    ``judge_prompts``: what the judge reads for each row (:func:`check_rank_rows`); default: the rows' prompts.
    With ``complete_margins``, rows whose best and worst never met get P(best beats worst) from one more batched
    ``judge.compare`` call, so ``margin`` is set for every ranked row with two distinct candidates. With
    ``prob_matrix`` (round robin or a pointwise judge), every row also gets its ``prob_matrix`` column.
    """
    for i, row in enumerate(rows):
        if "prompt" not in row or "responses" not in row:
            raise ValueError(f"row {i} must have 'prompt' and 'responses' columns, has {sorted(row)}")
    if judge_prompts is None:
        judge_prompts = [r["prompt"] for r in rows]
    results, stats = rank_candidates_with_stats(
        judge,
        judge_prompts,
        [r["responses"] for r in rows],
        method=method,
        seed=seed,
        find_worst=find_worst,
        prob_matrix=prob_matrix,
    )
    if complete_margins:
        missing = [i for i, r in enumerate(results) if r.skipped is None and r.margin is None and r.worst is not None]
        if missing:
            margins = judge.compare(
                [judge_prompts[i] for i in missing],
                [rows[i]["responses"][results[i].best] for i in missing],
                [rows[i]["responses"][results[i].worst] for i in missing],
            )
            margins = check_probabilities(judge, margins, len(missing))
            for i, margin in zip(missing, margins):
                results[i].margin = margin
                results[i].num_comparisons += 1
            stats.compare_calls += 1
            stats.rows_judged += len(missing)
            stats.matches += len(missing)
    out = []
    for row, res in zip(rows, results):
        responses = row["responses"]
        pair = {"chosen": None, "rejected": None}
        if res.skipped is None and res.worst is not None:
            pair = preference_columns(row["prompt"], responses[res.best], responses[res.worst])
        out.append(
            {
                **row,
                "best": res.best,
                "worst": res.worst,
                "scores": res.scores,
                "rewards": ranking_rewards(len(responses), res.best, res.worst, res.scores),
                "num_comparisons": res.num_comparisons,
                "num_scored": res.num_scored,
                "margin": res.margin,
                "skipped": res.skipped,
                **pair,
                **({"prob_matrix": res.prob_matrix} if prob_matrix else {}),
            }
        )
    return out, stats


def rank_dataset(config: RankConfig, judge_args: JudgeArguments) -> dict:
    """Rank ``config.dataset_name`` into ``config.output`` with the judge of ``judge_args``, sharded over the
    processes of the launch and resumable by shard; returns the summary (on every process)."""
    from rlhf_pairs.utils.distributed import process_state

    state = process_state()
    with stop_on_signals():  # Ctrl-C and SIGTERM stop the run for sure
        rows, judge_prompts, notes = _read_input(config)  # a bad input fails here, before the output is touched
        with main_process_lock(config.output, state):  # one run per output
            return _rank_locked(config, judge_args, state, rows, judge_prompts, notes)


def _read_input(config: RankConfig) -> tuple[list[dict], list, dict]:
    """The input rows, the judge's prompts and the prompt notes, every row checked before any judging."""
    lines: list[int] = []
    rows = load_rows(config.dataset_name, config.dataset_config, config.dataset_train_split, line_numbers=lines)
    source = config.dataset_name

    def where(i: int) -> str:
        return f"{source}, line {lines[i]}" if lines else f"{source}, row {i}"

    judge_prompts, notes = check_rank_rows(rows, where, config.system_message)
    for line in describe_prompt_notes(notes, config.system_message):
        logger.warning("%s: %s", source, line)
    if Path(config.output).suffix == ".parquet":
        check_parquet_writable(rows)
    return rows, judge_prompts, notes


def _rank_locked(config: RankConfig, judge_args: JudgeArguments, state, rows, judge_prompts, notes) -> dict:
    from accelerate.utils import tqdm

    # ------------------------------------------------------------------ finished shards: reuse what is still valid
    shard_dir = Path(str(config.output) + ".shards")
    marker = shard_dir / "fingerprint.json"
    current = fingerprint(config, judge_args)
    starts = list(range(0, len(rows), config.shard_size))
    shards = [shard_dir / f"shard-{k:05d}.jsonl" for k in range(len(starts))]
    found = sorted(shard_dir.glob("shard-*.jsonl"))
    recorded = (
        json.loads(marker.read_text()) if marker.exists() else ({"unknown": "no fingerprint.json"} if found else None)
    )
    old, now = comparable(recorded, current) if recorded is not None else (None, current)
    if recorded is not None and old != now:  # every process decides the same from the same files
        if not config.overwrite:
            changed = changed_inputs(old, now, judge_file_inputs(current))
            made_with, reuse = (
                (f"another judge: {'; '.join(changed)} changed since", "restore them")
                if changed
                else ("other arguments", "re-run with the original arguments")
            )
            raise ValueError(
                f"{shard_dir} holds {len(found)} finished shard(s) made with {made_with} (changed: "
                f"{changed_keys(old, now)}); {reuse} to reuse them, pass --overwrite "
                "true to discard them, or choose another output"
            )
        if state.is_main_process:
            for path in [*found, marker, Path(config.output)]:  # the output joined from them is stale too
                path.unlink(missing_ok=True)
    elif state.is_main_process:
        if recorded is not None and set(current) - set(recorded):  # recorded before its content digests: add them
            write_json_atomic(marker, current)
        for k, path in enumerate(shards):
            if path.exists() and not _shard_is_current(path, rows[starts[k] : starts[k] + config.shard_size]):
                logger.warning(
                    "%s: its input rows in %s changed since it was ranked (or an older release wrote it); ranking it "
                    "again",
                    path.name,
                    config.dataset_name,
                )
                path.unlink()
        for path in found:
            if path not in shards:
                path.unlink()  # beyond the input's last shard (the input got shorter)
    state.wait_for_everyone()

    # ------------------------------------------------------------------ ranking, shard by shard
    mine = [k for k in range(len(starts)) if k % state.num_processes == state.process_index]
    todo = [k for k in mine if not shards[k].exists()]
    if config.max_shards is not None:
        todo = todo[: config.max_shards]
    judge = judge_args.load(state.device) if todo else None
    matches = rows_judged = rows_scored = 0
    start = time.perf_counter()
    for k in tqdm(todo, main_process_only=True, desc="ranking shards", disable=not show_progress_bars()):
        if hasattr(judge, "clear_cache"):  # a hit from an earlier shard would make this shard depend on it
            judge.clear_cache()
        part = slice(starts[k], starts[k] + config.shard_size)
        shard_rows, stats = rank_rows(
            judge,
            rows[part],
            config.ranking_method,
            config.seed,
            config.find_worst,
            config.complete_margins,
            judge_prompts[part],
            config.prob_matrix,
        )
        if not marker.exists():  # recorded with the first shard: a failed start leaves nothing to refuse
            write_json_atomic(marker, current)
        write_jsonl_atomic(shards[k], shard_rows)
        kill_point("shard")
        matches += stats.matches
        rows_judged += stats.rows_judged
        rows_scored += stats.rows_scored
    elapsed = time.perf_counter() - start
    state.wait_for_everyone()

    # ------------------------------------------------------------------ output, joined in input order
    done = all(shard.exists() for shard in shards)
    # What was read: the rows' digest, so a summary (iterate's stage.json) tells which data it ranked.
    summary = {
        "prompts": len(rows),
        "input_sha256": sha256_json(rows),
        "shards": len(starts),
        "complete": done,
        **notes,
    }
    if done:
        ranked = [row for shard in shards for row in read_jsonl(shard)]
        if len(ranked) != len(rows):
            raise RuntimeError(f"shards hold {len(ranked)} rows for {len(rows)} input rows; re-run with --overwrite")
        summary.update(
            ranked=sum(r["skipped"] is None for r in ranked),
            skipped=sum(r["skipped"] is not None for r in ranked),
            comparisons=sum(r["num_comparisons"] for r in ranked),
            scored=sum(r["num_scored"] for r in ranked),
        )
        if state.is_main_process:
            _write_output(Path(config.output), ranked)
    # Every process has read the shards and the output is written before any returns: a caller may then move the
    # output or remove the shards (iterate's rank stage commits and deletes its partial directory right after).
    state.wait_for_everyone()
    summary.update(
        new_matches_this_process=matches, judge_rows_this_process=rows_judged, scored_rows_this_process=rows_scored
    )
    usage = summed_judge_usage(judge, state)
    if usage:  # an API judge's requests and tokens (judge_type openai), over every process
        summary["judge_usage"] = usage
    summary["pairs_per_second"] = matches / elapsed if elapsed > 0 and matches else 0.0
    touched = ", ".join(f"{notes[key]} {key}" for key in PROMPT_NOTES if notes[key])
    logger.info(
        "rank: %d prompts, %s ranked, %s skipped, %s comparisons, %s responses scored%s over %d process(es), %.1f "
        "pairs/s (main process)%s",
        len(rows),
        summary.get("ranked", "?"),
        summary.get("skipped", "?"),
        summary.get("comparisons", "?"),
        summary.get("scored", "?"),
        f" (prompts: {touched})" if touched else "",
        state.num_processes,
        summary["pairs_per_second"],
        "" if done else f"; incomplete, re-run to finish ({config.output})",
    )
    if usage:
        logger.info("rank: judge usage %s", ", ".join(f"{k} {v}" for k, v in sorted(usage.items())))
    return summary


def _shard_is_current(path: Path, inputs: list[dict]) -> bool:
    """Whether a finished shard was ranked from exactly ``inputs`` (its rows carry their input columns) by this
    release (its rows carry every output column: a shard written before ``rewards`` existed is ranked again, as
    its ``chosen``/``rejected`` may be in the older format)."""
    try:
        ranked = read_jsonl(path)
    except ValueError:
        return False
    if len(ranked) != len(inputs) or any(not set(OUTPUT_COLUMNS) <= set(row) for row in ranked):
        return False
    normal = json.loads(json.dumps(inputs, ensure_ascii=False, default=str))
    written = (*OUTPUT_COLUMNS, *OPTIONAL_OUTPUT_COLUMNS)
    return all(all(out.get(k) == v for k, v in row.items() if k not in written) for out, row in zip(ranked, normal))


def _write_output(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".jsonl":
        write_jsonl_atomic(path, rows)
        return
    import datasets

    with atomic_path(path) as tmp:
        datasets.Dataset.from_list(rows).to_parquet(str(tmp))
