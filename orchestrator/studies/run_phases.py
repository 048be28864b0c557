"""The whole run's phases, as the launcher sees them: from submission to the job's end.

The ranks measure start-up, data wait, compute, eval, checkpoints and time lost to
preemptions, each with its own clock, and count what none of those clocks measured as
``other`` (:mod:`jobs.rank.phases`); they leave the totals in ``run.json``. Only the launcher
knows when the job was submitted, when the scheduler started it and when it saw the job
end, so once a job has ended it adds:

* ``queued``: submission to the job's start (Slurm: ``StartTime`` of ``scontrol show job``,
  which is SubmitTime to StartTime plus sbatch's own round trip; Ray: submitted to the
  workers up; local: submitted to the supervisor starting the ranks, about 0);
* ``startup``: the job's start to the first ``run_start`` (script, srun, imports,
  rendezvous, data listing, model build), less ``preflight`` when that ran in the job;
* ``shutdown``: the ranks' end to the moment the launcher saw the job end (rank 0's last
  records, process exit, the scheduler's epilogue, the launcher's poll). The model and the
  run page are sent after that, once the ranks have exited, and are not in it
  (``device_release_s`` is ``run_stop`` to the last rank's exit: :mod:`jobs.tracking.sender`).

On CPU they add up to ``wall_time_s`` (submission to the end, requeues included), up to
clock rounding, since the ranks' ``other`` is what their clocks left over: the test of the
figures is how small ``other`` stays, and the table prints it beside the rest. On GPUs they
add up to the wall time plus the device compute that overlapped a host phase.
:func:`phase_breakdown` computes them, :func:`record_phases` logs them to the run as
``phase_<name>_s`` metrics plus a stacked-bar PNG, and prints one short table. Where the job's
MLflow spool is on this machine, they are queued there (the chart as a ``phases_chart`` record
that the sender draws) and sent with the rest of the run's last records, so the launcher
imports neither MLflow nor matplotlib for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.contract.checkpoint_index import read_run_info
from jobs.rank.phases import phase_metrics
from jobs.tracking.mlflow_send import send_phases_chart
from jobs.tracking.run_charts import PHASE_ORDER
from jobs.tracking.spool import Spool
from orchestrator.spec.jobstore import JobRecord, find_record

# The order the table, the sweep report and the stacked bars list the phases in: ``other`` (what no rank clock
# measured) comes after the measured rank phases.
RUN_PHASES = PHASE_ORDER  # submission to the end, in the order the stacked bar draws them


@dataclass
class Breakdown:
    """Seconds per phase of one run, and the wall time they should add up to."""

    phases: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def total_s(self) -> float:
        return sum(self.phases.get(name, 0.0) for name in RUN_PHASES)


def first_record(record: JobRecord, info: dict[str, Any]) -> JobRecord:
    """The job that started this run (an earlier job when this one was ``--resume``\\ d), if known."""
    attempts = info.get("attempts") or []
    if not attempts or attempts[0] == record.job_id:
        return record
    from orchestrator.spec.paths import podrun_home

    try:
        return find_record(podrun_home(), attempts[0])
    except Exception:  # noqa: BLE001 - an old or foreign job: fall back to this one
        return record


def phase_breakdown(record: JobRecord, info: dict[str, Any], preflight_s: float | None = None,
                    seen_end: float | None = None) -> Breakdown | None:
    """The run's phases from the ranks' totals in ``run.json`` and the launcher's times; None without them."""
    ranks = info.get("phases")
    if not ranks or "first_run_start" not in info or "phases_at" not in info:
        return None
    first = first_record(record, info)
    submitted = first.submitted_at
    started = first.extra.get("started_at") or info["first_origin"]
    if not submitted <= started <= info["first_run_start"]:
        started = min(max(info["first_origin"], submitted), info["first_run_start"])
    ended = seen_end or record.finished_at or time.time()
    phases = {"queued": started - submitted, "startup": info["first_run_start"] - started}
    if preflight_s:
        phases["preflight"] = preflight_s
        phases["startup"] = max(phases["startup"] - preflight_s, 0.0)
    from_ranks = ("data_wait", "compute", "eval", "checkpoint", "other", "lost")
    phases |= {name: float(ranks.get(name, 0.0)) for name in from_ranks}
    phases["shutdown"] = max(ended - info["phases_at"], 0.0)
    return Breakdown(phases={name: phases[name] for name in RUN_PHASES if name in phases},
                     wall_s=ended - submitted)


def format_breakdown(breakdown: Breakdown) -> str:
    """One short table: each phase's seconds and share, then the sum against the wall time."""
    wall = max(breakdown.wall_s, 1e-9)
    lines = [f"phases (submission to end, {breakdown.wall_s:.1f} s wall):"]
    for name, seconds in breakdown.phases.items():
        lines.append(f"  {name:<11}{seconds:>9.1f} s {100 * seconds / wall:>6.1f}%")
    lines.append(f"  {'sum':<11}{breakdown.total_s:>9.1f} s {100 * breakdown.total_s / wall:>6.1f}%")
    return "\n".join(lines)


def breakdown_metrics(breakdown: Breakdown) -> dict[str, float]:
    """``phase_<name>_s`` for every phase (``train`` = data_wait + compute) and ``wall_time_s``."""
    phases = dict(breakdown.phases)
    phases["train"] = phases.get("data_wait", 0.0) + phases.get("compute", 0.0)
    return phase_metrics(phases) | {"wall_time_s": round(breakdown.wall_s, 4)}


def record_phases(record: JobRecord, say: Any = print, spool: Spool | None = None) -> Breakdown | None:
    """After the job ended: compute the breakdown, log it to the job's MLflow run, and print it.

    With ``spool`` (the job's MLflow spool, readable here) the metrics and the chart are
    queued in it, for whoever sends its last records (:func:`jobs.tracking.sender.replay_spool`);
    otherwise they go to MLflow now. MLflow trouble costs a one-line warning, never the
    launch's exit code.
    """
    info = read_run_info(Path(record.checkpoint_dir))
    run_id = info.get("mlflow_run_id")
    if spool is not None:
        breakdown = phase_breakdown(record, info, spooled_metric(spool, PREFLIGHT_METRIC))
        if breakdown is not None:
            say(format_breakdown(breakdown))
            _queue(spool, breakdown, record.name)
        return breakdown
    client = _client(record.tracking_uri) if run_id else None
    preflight = _metric(client, run_id, PREFLIGHT_METRIC)
    breakdown = phase_breakdown(record, info, preflight)
    if breakdown is None:
        return None
    say(format_breakdown(breakdown))
    if client is not None:
        try:
            _log(client, run_id, breakdown, record.name)
        except Exception as exc:  # noqa: BLE001 - the run itself is done and recorded
            say(f"warning: could not log the phases to MLflow ({type(exc).__name__}: {str(exc)[:200]})")
    return breakdown


PREFLIGHT_METRIC = "phase_preflight_s"


def spooled_metric(spool: Spool, name: str) -> float | None:
    """The last value of metric ``name`` among a spool's records (what the run logged, sent or not)."""
    records, _ = spool.load()
    values = [record["metrics"][name] for record in records if record["kind"] == "metrics"
              and name in record["metrics"]]  # fmt: skip
    return values[-1] if values else None


def _queue(spool: Spool, breakdown: Breakdown, name: str) -> None:
    """The phases as spool records: one metrics record, and the chart for the sender to draw (``phases_chart``)."""
    now = int(time.time() * 1000)
    spool.append_next({"kind": "metrics", "metrics": breakdown_metrics(breakdown), "step": 0, "timestamp": now})
    spool.append_next(chart_record(breakdown, name))


def chart_record(breakdown: Breakdown, name: str) -> dict[str, Any]:
    """The phases chart as a ``phases_chart`` record: whoever sends it draws it."""
    return {"kind": "phases_chart", "rows": [[name, breakdown.phases]],
            "title": f"where the {breakdown.wall_s:.0f} s went", "artifact_path": "phases"}


def _client(tracking_uri: str) -> Any:
    from orchestrator.studies.tracking_client import tracking_client

    return tracking_client(tracking_uri)


def _metric(client: Any, run_id: str | None, name: str) -> float | None:
    if client is None:
        return None
    try:
        return client.get_run(run_id).data.metrics.get(name)
    except Exception:  # noqa: BLE001 - unreachable: the breakdown goes on without it
        return None


def _log(client: Any, run_id: str, breakdown: Breakdown, name: str) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in breakdown_metrics(breakdown).items()]
    client.log_batch(run_id, metrics=metrics)
    send_phases_chart(client, run_id, chart_record(breakdown, name))
