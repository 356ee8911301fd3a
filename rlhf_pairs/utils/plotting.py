"""The PNG charts the jobs write, with one style: matplotlib's object API on the Agg canvas (no pyplot state, no
global backend switch, safe in any process), written atomically."""

from __future__ import annotations

from pathlib import Path

from rlhf_pairs.utils.io import atomic_path, read_jsonl


def _figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **kwargs)


def plot_rounds(root: str | Path, metrics: list[dict], path: str | Path | None = None):
    """The iterative loop's PNG, from the rounds' own files under ``root``: per-step training loss and DPO reward
    accuracy (every round, end to end, a dotted line where a round starts), the distribution of the judge's margin
    P(best beats worst) per round, and the win rate per round with its 95% interval and the 0.5 line. Written
    atomically to ``path`` (unless ``None``); a panel without data says so instead of drawing a lone dot.

    Returns the figure; its axes (``fig.axes``) are, in order: loss, reward accuracy, margin, win rate."""
    import json

    root = Path(root)
    fig = _figure(figsize=(10, 7), layout="constrained")
    (loss_ax, acc_ax), (margin_ax, win_ax) = fig.subplots(2, 2)
    offset = 0
    for m in metrics:
        history_file = root / f"round_{m['round']}" / "train" / "log_history.json"
        history = json.loads(history_file.read_text()) if history_file.exists() else []
        steps = [h for h in history if "loss" in h]
        if steps:
            for ax, key in ((loss_ax, "loss"), (acc_ax, "rewards/accuracies")):
                points = [(offset + h["step"], h[key]) for h in steps if key in h]
                if points:
                    ax.plot(*zip(*points), marker=".", label=f"round {m['round']}")
                ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=0.8)
            offset += max(h["step"] for h in steps)
    for ax, title in ((loss_ax, "training loss per step"), (acc_ax, "DPO reward accuracy per step")):
        ax.set_title(title)
        ax.set_xlabel("step (all rounds)")
        if not ax.lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    acc_ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    for m in metrics:
        rankings = root / f"round_{m['round']}" / "rank" / "rankings.jsonl"
        if rankings.exists():
            rows = read_jsonl(rankings)  # lines end at \n only: generated text may hold U+2028
            margins = [r["margin"] for r in rows if r.get("margin") is not None]
            if margins:
                margin_ax.hist(margins, bins=20, range=(0, 1), histtype="step", label=f"round {m['round']}")
    margin_ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    margin_ax.set_title("judge margin P(best beats worst), per prompt")
    margin_ax.set_xlabel("P")
    rounds = [m for m in metrics if m.get("eval/win_rate") is not None]
    if rounds:
        x = [m["round"] for m in rounds]
        y = [m["eval/win_rate"] for m in rounds]
        low = [m["eval/win_rate"] - m.get("eval/ci_low", m["eval/win_rate"]) for m in rounds]
        high = [m.get("eval/ci_high", m["eval/win_rate"]) - m["eval/win_rate"] for m in rounds]
        win_ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=4)
        win_ax.set_xticks(x)
    else:
        win_ax.text(0.5, 0.5, "no eval stage", ha="center", va="center", transform=win_ax.transAxes)
    win_ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    win_ax.set_ylim(0, 1)
    win_ax.set_title("win rate vs previous policy (95% interval)")
    win_ax.set_xlabel("round")
    for ax in (loss_ax, acc_ax, margin_ax):
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=8)
    if path is not None:
        _save(fig, path, dpi=80)
    return fig


def write_section_chart(path: str | Path, report: dict) -> None:
    """A PNG bar chart of the report's section scores (RewardBench's four, in the report's order) and their mean
    (x100), written atomically."""
    sections = list(report["sections"])
    names = [*sections, "Score"]
    values = [report["sections"][name] for name in sections] + [report["score"]]
    heights = [0.0 if v is None else 100 * v for v in values]
    fig = _figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    bars = ax.bar(names, heights, color=["#4c72b0"] * len(sections) + ["#dd8452"])
    for bar, value in zip(bars, values):
        label = "n/a" if value is None else f"{100 * value:.1f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.axhline(50, color="grey", linestyle="--", linewidth=1)  # chance level
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"RewardBench sections: {report['metadata'].get('judge', 'judge')}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
