"""The PNG charts the jobs write, with one style: matplotlib's object API on the Agg canvas (no pyplot state, no
global backend switch, safe in any process), written atomically."""

from __future__ import annotations

from pathlib import Path

from rlhf_pairs.utils.io import atomic_path


def _figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **kwargs)


PLOTTED = (
    ("pairs/kept", "pairs kept"),
    ("rank/mean_margin", "judge margin P(best > worst)"),
    ("train/train_loss", "training loss"),
    ("eval/win_rate", "win rate vs previous policy"),
)


def plot_metrics(metrics: list[dict], path: Path) -> None:
    """A 2x2 PNG of pairs kept, judge margin, training loss and win rate across rounds, written atomically."""
    fig = _figure(figsize=(9, 6), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax, (key, title) in zip(axes.flat, PLOTTED):
        points = [(m["round"], m[key]) for m in metrics if m.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o")
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_xticks([m["round"] for m in metrics])
    _save(fig, path, dpi=80)


def write_section_chart(path: str | Path, report: dict) -> None:
    """A PNG bar chart of the four section scores and their mean (x100), written atomically."""
    from rlhf_pairs.evaluation import SECTIONS

    names = [*SECTIONS, "Score"]
    values = [report["sections"][name] for name in SECTIONS] + [report["score"]]
    heights = [0.0 if v is None else 100 * v for v in values]
    fig = _figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    bars = ax.bar(names, heights, color=["#4c72b0"] * len(SECTIONS) + ["#dd8452"])
    for bar, value in zip(bars, values):
        label = "n/a" if value is None else f"{100 * value:.1f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.axhline(50, color="grey", linestyle="--", linewidth=1)  # chance level
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"RewardBench sections: {report['metadata'].get('judge', 'judge')}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
