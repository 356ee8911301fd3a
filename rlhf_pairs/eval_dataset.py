"""The ``eval`` job's runner (``rlhf-pairs eval``, :mod:`rlhf_pairs.scripts.eval_judge`): a judge on RewardBench or any
data in its format, sharded over processes, into ``report.json``, ``per_example.jsonl``, ``report.md`` and
``sections.png`` under ``output_dir``.

Input: any datasets-loadable source with ``prompt`` (str or messages), ``chosen``, ``rejected`` and ``subset``
(default ``allenai/reward-bench``, split ``filtered``). Outputs under ``output_dir``, each written atomically by the
main process:

- ``report.json``: :func:`rlhf_pairs.evaluation.build_report` (per-subset accuracy, RewardBench's four section
  scores and their mean, ties, position consistency and bias, length bias) plus the job's settings;
- ``per_example.jsonl``: one record per input row, in input order (:func:`rlhf_pairs.evaluation.score_examples`);
- ``report.md``: the same numbers as readable tables; ``sections.png``: a bar chart of the sections.

A reward model (``--judge_type reward_model``, or any judge with ``score_responses``) is scored as RewardBench's
``scripts/run_rm.py`` (rewardbench 0.1.4) scores a classifier: the chosen and the rejected response get one reward
each and ``correct`` is reward(chosen) > reward(rejected) on the raw rewards (equal rewards: the ``ties`` rule, wrong
by default as in run_rm.py). ``per_example.jsonl`` keeps both rewards and the report's ``decided_by`` /
``correct_rule`` (and a line of ``report.md``) say so; P(chosen) = sigmoid((r_c - r_r) / T) is still reported.

The rows are cut into fixed shards of ``shard_size`` pairs; process k of K judges shards k, k+K, ... and the records
are gathered and put back in input order. Each shard is judged on its own, in the same batches whatever K (the
judge's score cache is cleared at the start of every shard, so no shard depends on the shards judged before it), and
on CPU every process loads the judge on device ``cpu`` (not the process group's ``cpu:0``: moving a model there copies
its weights into differently aligned memory, and MKL's float32 matmuls round differently by alignment). Hence:

- CPU: with the same machine, software and thread count (``OMP_NUM_THREADS``), the outputs of 1 and K processes are
  bit-identical (tested). A different thread count changes float32 rounding.
- GPU: not tested. The batches are the same, but GPU kernels (bf16 by default) are not guaranteed bit-deterministic,
  so scores may differ in the last bits between runs, whatever K.

Timing (pairs/s) goes to the log line and the returned summary, not into the report.

Every row is checked before the judge loads (:func:`rlhf_pairs.evaluation.check_rewardbench_rows`), located by its
line in a local ``.jsonl`` file: the columns, the responses, and the prompt, read with the rule every job applies
(:func:`rlhf_pairs.data_utils.prepare_prompt`: leading system turns merged into the first user turn, dropped or
refused per ``system_message``; the report's ``metadata.prompt_notes`` and the log line count the prompts it
changed). So is the output: an existing report is kept without ``overwrite``, another run on the same ``output_dir``
is refused (naming its pid and host), and an ``output_dir`` that cannot be written fails before any judging.

Assumptions: every row is one comparison; a subset outside RewardBench's sections is reported on its own and left
out of the sections. Raises ``ValueError`` for an empty dataset, a missing column, a non-string response or a prompt
the judge cannot read.
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
    judge = judge_args.load(state.device) if mine else None

    # ------------------------------------------------------------------ evaluation
    start = time.perf_counter()
    records: list[dict] = []
    for k in tqdm(mine, main_process_only=True, desc="judging pairs", unit="shard"):
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
        **judge_args.result_fields(),
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
