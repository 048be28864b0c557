"""PNG charts of a finished run (matplotlib, headless): what a reviewer looks at first.

- ``eval_<metric>.png``: the eval metric against wall time since the run started, with
  the target as a dashed line;
- ``throughput.png``: training throughput against wall time;
- ``loss.png``: training loss against the optimizer step.

Drawn by the sender (:mod:`jobs.tracking.run_page`) from the run's metric history in MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

History = dict[str, list[tuple[int, int, float]]]  # metric -> [(step, timestamp ms, value)]
METRIC_LABELS = {"top1": "top-1 accuracy", "bleu": "BLEU"}


def draw_charts(folder: Path, history: History, start_ms: int, record: dict[str, Any]) -> list[Path]:
    """Draw the charts that have data into ``folder``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

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
