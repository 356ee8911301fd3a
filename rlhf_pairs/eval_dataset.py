"""The ``eval`` job's runner (``rlhf-pairs eval``): a judge on RewardBench or any data in its format (``prompt``,
``chosen``, ``rejected``, ``subset``), sharded over processes, into ``report.json``, ``per_example.jsonl``,
``report.md`` and ``sections.png`` under ``output_dir`` (each written atomically by the main process).

Every row is checked before the judge loads (named by its file line); an existing report is kept without
``overwrite``; one run per ``output_dir``. Fixed shards of ``shard_size`` pairs, each judged on its own (the judge's
cache cleared per shard, the judge on plain ``cpu`` on a CPU), so on CPU the outputs of 1 and N processes are
bit-identical for one thread count. A reward model is scored by RewardBench's classifier rule (rewardbench 0.1.4
``scripts/run_rm.py``). The metrics: :mod:`rlhf_pairs.evaluation`; the long form: ``docs/evaluation.md``.

Raises ``ValueError`` for an empty dataset, a missing column, a non-string response or a prompt the judge cannot
read; ``PermissionError`` when ``output_dir`` cannot be written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlhf_pairs.configs import EvalConfig, JudgeArguments
from rlhf_pairs.data_utils import PROMPT_NOTES, load_rows
from rlhf_pairs.evaluation import (
    SECTIONS,
    build_report,
    check_rewardbench_rows,
    format_percent,
    format_report,
    score_examples,
)
from rlhf_pairs.utils.distributed import get_logger, process_state, summed_judge_usage
from rlhf_pairs.utils.faults import kill_point, stop_on_signals
from rlhf_pairs.utils.hashing import sha256_json
from rlhf_pairs.utils.io import write_jsonl_atomic, write_text_atomic
from rlhf_pairs.utils.locking import main_process_lock
from rlhf_pairs.utils.plotting import write_section_chart
from rlhf_pairs.utils.verbosity import show_progress_bars

logger = get_logger(__name__)  # main process only

REPORT_FILE, EXAMPLES_FILE, TABLE_FILE, CHART_FILE = "report.json", "per_example.jsonl", "report.md", "sections.png"
OUTPUT_FILES = (REPORT_FILE, EXAMPLES_FILE, TABLE_FILE, CHART_FILE)


def evaluate_dataset(config: EvalConfig, judge_args: JudgeArguments) -> dict:
    """Evaluate ``judge_args.judge`` on ``config.dataset_name``; writes the outputs and returns the report (every
    process), with ``pairs_per_second`` and ``output_dir`` added. All processes of a launch call it together."""
    state = process_state()

    # ------------------------------------------------------------------ dataset: every row checked before judging
    lines: list[int] = []
    rows = load_rows(config.dataset_name, config.dataset_config, config.dataset_test_split, line_numbers=lines)
    if config.max_examples is not None:
        rows, lines = rows[: config.max_examples], lines[: config.max_examples]
    source = config.dataset_name if lines else f"dataset {config.dataset_name!r} (split {config.dataset_test_split!r})"
    _, notes = check_rewardbench_rows(rows, source, lines, config.system_message)
    out = Path(config.output_dir)
    if (out / REPORT_FILE).exists() and not config.overwrite:  # checked before judging, not after
        raise ValueError(
            f"{out} already holds {REPORT_FILE}; pass --overwrite true to replace it, or another output_dir"
        )
    with (
        stop_on_signals(),
        main_process_lock(out, state, create_dir=True),
    ):  # one run per output_dir; fails now if it cannot be written
        _check_writable(out, state)
        return _evaluate(config, judge_args, state, rows, out, notes)


def _check_writable(out: Path, state) -> None:
    """Raise ``PermissionError`` on every process, before any judging, when the main process cannot write the
    outputs into ``out``: a file cannot be created there, or an output's name is taken by a directory."""
    import tempfile

    from accelerate.utils import broadcast_object_list

    error = [None]
    if state.is_main_process:
        taken = [name for name in OUTPUT_FILES if (out / name).exists() and not (out / name).is_file()]
        try:
            if taken:
                raise IsADirectoryError(f"not a file: {', '.join(taken)}")
            with tempfile.TemporaryFile(dir=out, prefix=".write-check."):
                pass
        except OSError as err:
            error = [f"cannot write the outputs into {out} ({err}); choose another output_dir or fix its permissions"]
    if state.num_processes > 1:
        broadcast_object_list(error, from_process=0)
    if error[0] is not None:
        raise PermissionError(error[0])


def _evaluate(config: EvalConfig, judge_args: JudgeArguments, state, rows: list[dict], out: Path, notes: dict) -> dict:
    from accelerate.utils import gather_object, tqdm

    # ------------------------------------------------------------------ judge
    starts = list(range(0, len(rows), config.shard_size))
    mine = [k for k in range(len(starts)) if k % state.num_processes == state.process_index]
    # A process without shards (more processes than shards) only joins the gather. On CPU the judge lands on "cpu",
    # not the process group's "cpu:0" (tokenization.model_device).
    judge_fields = judge_args.result_fields()  # before judging: a judge file that cannot be read fails the start
    judge = judge_args.load(state.device) if mine else None

    # ------------------------------------------------------------------ evaluation
    start = time.perf_counter()
    records: list[dict] = []
    for k in tqdm(mine, main_process_only=True, desc="judging pairs", unit="shard", disable=not show_progress_bars()):
        if hasattr(judge, "clear_cache"):  # a shard's scores must not depend on the shards judged before it
            judge.clear_cache()
        shard = rows[starts[k] : starts[k] + config.shard_size]
        records += score_examples(
            judge, shard, start_index=starts[k], ties=config.ties, system_message=config.system_message, warn=False
        )
        kill_point("shard")  # a stop signal swallowed by a finaliser is raised here
    records = sorted(gather_object(records), key=lambda r: r["index"])
    elapsed = time.perf_counter() - start
    if [r["index"] for r in records] != list(range(len(rows))):
        raise RuntimeError(f"gathered {len(records)} records for {len(rows)} rows")
    metadata = {
        **judge_fields,
        **{k: getattr(config, k) for k in ("dataset_name", "dataset_config", "dataset_test_split", "max_examples")},
        "dataset_sha256": sha256_json(rows),  # what was read: a re-run on edited data is told apart
        "ties": config.ties,
        "system_message": config.system_message,
        "prompt_notes": dict(notes),  # prompts the system-turn rule changed for the judge (prepare_prompt)
    }
    if judge_args.judge_type == "pairrm":  # which input format the scores belong to (card vs reward-bench's)
        metadata["judge_pairrm_format"] = judge_args.judge_pairrm_format
    report = build_report(records, metadata, ties=config.ties)

    # ------------------------------------------------------------------ save
    if state.is_main_process:
        write_jsonl_atomic(out / EXAMPLES_FILE, records)
        write_text_atomic(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        write_text_atomic(out / TABLE_FILE, format_report(report))
        write_section_chart(out / CHART_FILE, report)
    pairs_per_second = len(rows) / elapsed if elapsed > 0 else 0.0
    touched = ", ".join(f"{notes[key]} {key}" for key in PROMPT_NOTES if notes[key])
    logger.info(
        "eval: %d pairs%s over %d process(es), accuracy %.2f (decided by %s), %s, score %s, position consistency %s, "
        "bias %s, %.1f pairs/s -> %s",
        len(rows),
        f" (prompts: {touched})" if touched else "",
        state.num_processes,
        100 * report["accuracy"],
        report["decided_by"],
        ", ".join(f"{name} {format_percent(report['sections'][name])}" for name in SECTIONS),
        format_percent(report["score"]),
        format_percent(report["position"]["consistency"]),
        "n/a" if report["position"]["bias"] is None else f"{report['position']['bias']:+.4f}",
        pairs_per_second,
        out,
    )
    usage = summed_judge_usage(judge, state)  # an API judge's requests and tokens, over every process
    if usage and state.is_main_process:
        logger.info("eval: judge usage %s", ", ".join(f"{k} {v}" for k, v in sorted(usage.items())))
    state.wait_for_everyone()
    return {
        **report,
        "pairs_per_second": pairs_per_second,
        "output_dir": str(out),
        **({"judge_usage": usage} if usage else {}),
    }
