"""The names of the MLflow metrics a run records, in one place.

Rank 0 writes them (:mod:`jobs.tracking.run_tracking`), the sender reads them back for the
run page (:mod:`jobs.tracking.run_page`), and the launcher reads them for phases, sweeps,
reports and predictions (:mod:`orchestrator.studies`). A metric that depends on the task
(its metric, its unit) or the phase is built by the function here, never by hand.
"""

from __future__ import annotations

import re

TRAIN_LOSS = "train_loss"
LR = "lr"
TIME_TO_TRAIN = "time_to_train_s"  # MLPerf: run_start to run_stop, across resumed attempts
REACHED_TARGET = "reached_target"  # 1.0 or 0.0
BEST_METRIC = "best_metric"
EPOCHS_RUN = "epochs_run"
TIME_LOST = "time_lost_s"  # wall time between a checkpoint and the restart that resumed it
WALL_TIME = "wall_time_s"  # submission to the end, requeues included (the launcher's phases)
DEVICE_RELEASE = "device_release_s"  # run_stop to the exit of the last rank (Slurm: the allocation's end)
STRAGGLER_RATIO = "straggler_ratio"  # the slowest rank's time outside collectives over the median's, per log window
RESULT_SECTION = "result/"  # listed first in the MLflow UI's Model metrics tab
_PHASE = re.compile(r"^phase_(.+)_s$")


def eval_metric(metric: str) -> str:
    """``eval_top1``: the task's metric after each evaluation (step: the epoch)."""
    return f"eval_{metric}"


def throughput(unit: str) -> str:
    """``throughput_img_per_s``: items per second over the last log window."""
    return f"throughput_{unit}_per_s"


def mean_throughput(unit: str) -> str:
    """``mean_throughput_img_per_s``: items over time-to-train."""
    return f"mean_throughput_{unit}_per_s"


def phase(name: str) -> str:
    """``phase_compute_s``: the seconds of one phase (:mod:`jobs.rank.phases`)."""
    return f"phase_{name}_s"


def phase_name(metric: str) -> str | None:
    """``compute`` for ``phase_compute_s``; None for a metric that is not a phase."""
    match = _PHASE.match(metric)
    return match.group(1) if match else None
