"""PNG charts of a finished run (matplotlib, headless): what a reviewer looks at first.

- ``eval_<metric>.png``: the eval metric against wall time since the run started, with
  the target as a dashed line;
- ``throughput.png``: training throughput against wall time;
- ``loss.png``: training loss against the optimizer step.

Drawn by the sender (:mod:`jobs.tracking.run_page`) from the run's metric history in MLflow.
The phases chart (:func:`stacked_phases`) is drawn by the sender too, from the launcher's
``phases_chart`` record (matplotlib is loaded there already), and by ``podrun report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

History = dict[str, list[tuple[int, int, float]]]  # metric -> [(step, timestamp ms, value)]
METRIC_LABELS = {"top1": "top-1 accuracy", "bleu": "BLEU"}
# One color per phase, in the order the bars stack (train is shown as data_wait + compute).
PHASE_ORDER = ("queued", "preflight", "startup", "data_wait", "compute", "eval", "checkpoint", "other", "lost",
               "shutdown")
PHASE_COLORS = {"queued": "#bbbbbb", "preflight": "#8c564b", "startup": "#ff7f0e", "data_wait": "#d62728",
                "compute": "#2ca02c", "eval": "#1f77b4", "checkpoint": "#9467bd", "other": "#e377c2",
                "lost": "#000000", "shutdown": "#7f7f7f"}


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (imported on first use: about 0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def stacked_phases(rows: list[tuple[str, dict[str, float]]], path: Path, title: str) -> Path:
    """One horizontal bar per row (a run, a scale), its phases stacked left to right, in seconds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.8 + 0.5 * len(rows)), dpi=100)
    labels = [label for label, _ in rows]
    lefts = [0.0] * len(rows)
    for phase in PHASE_ORDER:
        widths = [float(phases.get(phase) or 0.0) for _, phases in rows]
        if not any(widths):
            continue
        ax.barh(labels, widths, left=lefts, color=PHASE_COLORS[phase], label=phase)
        lefts = [left + width for left, width in zip(lefts, widths)]
    ax.set_xlabel("seconds")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(plt, fig, Path(path))


def draw_charts(folder: Path, history: History, start_ms: int, record: dict[str, Any]) -> list[Path]:
    """Draw the charts that have data into ``folder``; return their paths."""
    plt = pyplot()
    metric, unit = record["metric"], record["unit"]
    minutes = lambda points: [(ms - start_ms) / 60000 for _, ms, _ in points]  # noqa: E731
    values = lambda points: [value for _, _, value in points]  # noqa: E731
    charts = []
    evals = history.get(f"eval_{metric}", [])
    if evals:
        fig, ax = _figure(plt, f"eval {METRIC_LABELS.get(metric, metric)}", "wall time (min)")
        ax.plot(minutes(evals), values(evals), marker="o", label=f"eval_{metric}")
        ax.axhline(record["target"], color="tab:red", linestyle="--", label=f"target {record['target']:g}")
        ax.legend(loc="lower right")
        charts.append(_save(plt, fig, folder / f"eval_{metric}.png"))
    throughput = history.get(f"throughput_{unit}_per_s", [])
    if throughput:
        fig, ax = _figure(plt, f"throughput ({unit}/s)", "wall time (min)")
        ax.plot(minutes(throughput), values(throughput))
        charts.append(_save(plt, fig, folder / "throughput.png"))
    loss = history.get("train_loss", [])
    if loss:
        fig, ax = _figure(plt, "training loss", "optimizer step")
        ax.plot([step for step, _, _ in loss], values(loss))
        charts.append(_save(plt, fig, folder / "loss.png"))
    return charts


def _figure(plt: Any, title: str, xlabel: str) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
