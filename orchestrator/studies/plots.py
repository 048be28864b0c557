"""The PNG charts podrun writes (matplotlib, headless): phases as stacked bars, and line charts.

Used by the end-of-run phase breakdown (:mod:`orchestrator.studies.run_phases`), ``podrun predict``
and ``podrun report``. matplotlib is imported on first use, never by ``podrun --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# One color per phase, in the order the bars stack (train is shown as data_wait + compute).
PHASE_ORDER = ("queued", "preflight", "startup", "data_wait", "compute", "eval", "checkpoint", "other", "lost",
               "shutdown")
PHASE_COLORS = {"queued": "#bbbbbb", "preflight": "#8c564b", "startup": "#ff7f0e", "data_wait": "#d62728",
                "compute": "#2ca02c", "eval": "#1f77b4", "checkpoint": "#9467bd", "other": "#e377c2",
                "lost": "#000000", "shutdown": "#7f7f7f"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stacked_phases(rows: list[tuple[str, dict[str, float]]], path: Path, title: str) -> Path:
    """One horizontal bar per row (a run, a scale), its phases stacked left to right, in seconds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.8 + 0.5 * len(rows)))
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
    return _save(fig, plt, path)


def line_chart(path: Path, title: str, xlabel: str, ylabel: str,
               series: dict[str, tuple[list[float], list[float], str]], log_log: bool = False) -> Path:
    """Lines ``{label: (xs, ys, matplotlib format)}`` on one axis (both axes logarithmic with ``log_log``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (xs, ys, fmt) in series.items():
        ax.plot(xs, ys, fmt, label=label)
    if log_log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
