"""Line charts for ``podrun predict`` and ``podrun report`` (matplotlib, headless).

The phases' stacked bars are :func:`jobs.tracking.run_charts.stacked_phases`: a run's sender draws
them too. matplotlib is imported on first use, never by ``podrun --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.tracking.run_charts import pyplot


def line_chart(path: Path, title: str, xlabel: str, ylabel: str,
               series: dict[str, tuple[list[float], list[float], str]], log_log: bool = False) -> Path:
    """Lines ``{label: (xs, ys, matplotlib format)}`` on one axis (both axes logarithmic with ``log_log``)."""
    plt = pyplot()
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
