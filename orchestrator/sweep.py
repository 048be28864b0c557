"""``podrun sweep JOB --nodes 1,2,4 [--tasks-per-node 1,2]``: one job at each scale, then the report.

Scales run one after another, so they do not compete for the machines they measure, each
as its own job on the job's backend (a Slurm job, a Ray job, or local ranks) named
``<job>-n<nodes>x<tasks>``. Before the first, the sweep opens an MLflow parent run; every
scale's run carries ``mlflow.parentRunId`` (and ``podrun.sweep``), so the MLflow UI nests
them. At the end :mod:`orchestrator.studies.report` builds the scaling report on the parent run.

The sweep's record is ``$PODRUN_HOME/sweeps/<id>/sweep.json``. ``podrun cancel SWEEP_ID``
stops the running scale (it checkpoints) and the scales after it; ``podrun sweep ...
--resume`` continues the latest sweep of that job: finished scales are kept, an
interrupted one resumes from its checkpoint, the rest start.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from jobs.contract.checkpoint_index import latest_checkpoint
from orchestrator.backends import get_backend
from orchestrator.errors import ConfigError, PodrunError
from orchestrator.launch import LaunchRequest, launch, resolve
from orchestrator.spec.jobstore import CANCELLED, SUCCEEDED, JobRecord, find_record, is_terminal

SWEEP_PREFIX = "sweep-"


@dataclass
class Scale:
    nodes: int
    tasks_per_node: int | None = None  # None: the job's own (one per GPU, or 1 on CPU)
    job_id: str = ""
    state: str = "PENDING"

    @property
    def label(self) -> str:
        return f"{self.nodes}x{self.tasks_per_node or 'auto'}"


@dataclass
class SweepRecord:
    sweep_id: str
    name: str
    job: str
    assignments: list[str]
    scales: list[Scale]
    tracking_uri: str
    experiment: str
    parent_run_id: str = ""
    backend: str | None = None
    cluster_file: str | None = None
    on: str | None = None
    preflight: bool = True
    cancelled: bool = False
    state: str = "RUNNING"
    created_at: float = field(default_factory=time.time)

    @staticmethod
    def folder(home: Path, sweep_id: str) -> Path:
        return home / "sweeps" / sweep_id

    def save(self, home: Path) -> None:
        path = self.folder(home, self.sweep_id) / "sweep.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".sweep.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SweepRecord:
        data = json.loads(Path(path).read_text())
        data["scales"] = [Scale(**scale) for scale in data["scales"]]
        return cls(**data)


def list_sweeps(home: Path) -> list[SweepRecord]:
    """Every readable sweep record, newest first."""
    found = []
    for path in (home / "sweeps").glob("*/sweep.json"):
        try:
            found.append(SweepRecord.load(path))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda sweep: sweep.created_at, reverse=True)


def find_sweep(home: Path, ref: str) -> SweepRecord | None:
    """The sweep whose id is ``ref`` or starts with it (None when no sweep matches)."""
    if not ref.startswith(SWEEP_PREFIX):
        return None
    matches = [sweep for sweep in list_sweeps(home) if sweep.sweep_id.startswith(ref)]
    exact = [sweep for sweep in matches if sweep.sweep_id == ref]
    if len(exact or matches) > 1:
        raise PodrunError(f"'{ref}' matches several sweeps; give more of the id")
    return (exact or matches or [None])[0]


def scale_grid(nodes: list[int], tasks: list[int] | None) -> list[Scale]:
    """Every (nodes, tasks per node) pair, smallest first."""
    return [Scale(n, t) for n in sorted(nodes) for t in (sorted(tasks) if tasks else [None])]


# --------------------------------------------------------------------------- running


def run_sweep(request: LaunchRequest, nodes: list[int], tasks: list[int] | None, *, resume: bool) -> int:
    """Run every scale of the sweep of ``request`` (or what is left of it with ``resume``), then report.

    Returns 0 when every scale reached its target, else the first other exit code.

    Raises:
        ConfigError: bad scales, or ``--resume`` without a matching earlier sweep.
    """
    from orchestrator.spec.paths import podrun_home

    home = podrun_home()
    base = resolve(replace(request, resume=None))
    for scale in scale_grid(nodes, tasks):  # every scale resolves before the first one starts
        resolve(replace(request, resume=None, assignments=_scale_sets(request.assignments, base.job.name, scale)))
    sweep = _resumed(home, base.job.name, nodes, tasks) if resume else None
    if sweep is None:
        sweep = SweepRecord(f"{SWEEP_PREFIX}{base.job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
                            base.job.name, request.job, request.assignments, scale_grid(nodes, tasks),
                            base.tracking_uri, base.job.experiment, backend=request.backend,
                            cluster_file=request.cluster_file, on=request.on, preflight=request.preflight)
        sweep.parent_run_id = open_parent_run(sweep, base)
    sweep.state, sweep.cancelled = "RUNNING", False
    sweep.save(home)
    print(f"sweep {sweep.sweep_id}: {', '.join(s.label for s in sweep.scales)} (nodes x tasks per node); "
          f"cancel with: podrun cancel {sweep.sweep_id}", flush=True)
    codes = [_run_scale(home, sweep, scale) for scale in sweep.scales]
    return _finish(home, sweep, codes)


def _resumed(home: Path, name: str, nodes: list[int], tasks: list[int] | None) -> SweepRecord:
    wanted = [s.label for s in scale_grid(nodes, tasks)]
    for sweep in list_sweeps(home):
        if sweep.name == name:
            if [s.label for s in sweep.scales] != wanted:
                raise ConfigError(f"--resume: sweep {sweep.sweep_id} covers {', '.join(s.label for s in sweep.scales)}"
                                  "; give the same --nodes and --tasks-per-node")
            return sweep
    raise ConfigError(f"--resume: no earlier sweep of '{name}' under {home / 'sweeps'}; run without --resume")


def _run_scale(home: Path, sweep: SweepRecord, scale: Scale) -> int | None:
    """Launch one scale and follow it to its end; None when it was skipped (done, or the sweep stopped)."""
    if SweepRecord.load(SweepRecord.folder(home, sweep.sweep_id) / "sweep.json").cancelled or sweep.cancelled:
        sweep.cancelled = True
        return None
    previous = _record(home, scale.job_id)
    if previous is not None and previous.state == SUCCEEDED:
        print(f"[sweep] {scale.label}: done earlier ({previous.job_id})", flush=True)
        return 0
    # the folder of the checkpoints names the job that started them (a resumed job writes into it too)
    resume = Path(previous.checkpoint_dir).name if previous and latest_checkpoint(Path(previous.checkpoint_dir)) \
        else None
    request = LaunchRequest(sweep.job, _scale_sets(sweep.assignments, sweep.name, scale), backend=sweep.backend,
                            on=sweep.on, cluster_file=sweep.cluster_file, resume=resume, preflight=sweep.preflight,
                            tags={"mlflow.parentRunId": sweep.parent_run_id, "podrun.sweep": sweep.sweep_id,
                                  "podrun.scale": scale.label})

    def submitted(plan: Any, record: JobRecord) -> None:
        print(f"[sweep] {scale.label}: {plan.job.world_size} ranks" + (f", resuming {resume}" if resume else ""),
              flush=True)
        scale.job_id = record.job_id
        sweep.save(home)

    code = launch(request, on_submitted=submitted)
    ended = _record(home, scale.job_id)
    scale.state = ended.state if ended is not None else "FAILED"
    sweep.cancelled = sweep.cancelled or scale.state == CANCELLED
    sweep.save(home)
    return code


def _scale_sets(assignments: list[str], name: str, scale: Scale) -> list[str]:
    """The job's ``--set`` list for one scale: its nodes, tasks per node and name."""
    sets = [*assignments, f"nodes={scale.nodes}", f"name={name}-n{scale.nodes}x{scale.tasks_per_node or 0}"]
    return sets + ([f"tasks_per_node={scale.tasks_per_node}"] if scale.tasks_per_node else [])


def _record(home: Path, job_id: str) -> JobRecord | None:
    if not job_id:
        return None
    try:
        return find_record(home, job_id)
    except PodrunError:
        return None


def _finish(home: Path, sweep: SweepRecord, codes: list[int | None]) -> int:
    latest = SweepRecord.load(SweepRecord.folder(home, sweep.sweep_id) / "sweep.json")
    sweep.cancelled = sweep.cancelled or latest.cancelled
    sweep.state = CANCELLED if sweep.cancelled else "FINISHED"
    sweep.save(home)
    _close_parent_run(sweep)
    if sweep.cancelled:
        print(f"sweep {sweep.sweep_id} cancelled; continue it with: podrun sweep {sweep.job} ... --resume")
        return 3
    from orchestrator.studies.report import build_report

    report = build_report(sweep.tracking_uri, sweep.parent_run_id)
    print(report.text)
    return next((code for code in codes if code not in (0, None)), 0)


def cancel_sweep(home: Path, sweep: SweepRecord) -> str:
    """Mark the sweep cancelled and stop its running scale (which checkpoints); says what it did."""
    sweep.cancelled = True
    sweep.save(home)
    for scale in sweep.scales:
        record = _record(home, scale.job_id)
        if record is None:
            continue
        backend = get_backend(record.backend)
        if not is_terminal(backend.status(record).state):
            backend.cancel(record)
            return f"cancelling {sweep.sweep_id}: {scale.label} ({record.job_id}) checkpoints and stops; no more scales"
    return f"cancelled {sweep.sweep_id}: no scale was running; no more scales start"


# --------------------------------------------------------------------------- the parent run


def open_parent_run(sweep: SweepRecord, plan: Any) -> str:
    """Create the sweep's MLflow parent run, with what the report needs to predict from it."""
    from mlflow.entities import Param

    from jobs.tracking.mlflow_send import experiment_id
    from orchestrator.studies.predict import comm_bytes, fabric_for, model_parameters
    from orchestrator.studies.tracking_client import tracking_client

    client = tracking_client(sweep.tracking_uri)
    experiment = experiment_id(client, sweep.experiment, sweep.tracking_uri)
    run = client.create_run(experiment, run_name=sweep.sweep_id,
                            tags={"podrun.kind": "sweep", "podrun.sweep": sweep.sweep_id, "podrun.job": sweep.name})
    notes: list[str] = []
    fabric = fabric_for(plan, notes)
    entry = plan.profile.throughput.get(plan.recipe.name)
    floor = entry.step_floor_ms if entry and entry.step_floor_ms is not None else (
        5.0 if plan.job.device == "cuda" else 0.0)
    params = {"job": sweep.job, "scales": " ".join(s.label for s in sweep.scales), "recipe": plan.recipe.name,
              "cluster": plan.profile.name, "predict.nvlink_gbs": fabric.nvlink_bps / 1e9,
              "predict.network_gbs": fabric.network_bps / 1e9, "predict.latency_us": fabric.hop_s * 1e6,
              "predict.step_floor_ms": floor, "predict.grad_bytes": model_parameters(plan) * comm_bytes(plan),
              "predict.eval_every": plan.recipe.eval.every_epochs, "predict.notes": "; ".join(notes)[:490]}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def _close_parent_run(sweep: SweepRecord) -> None:
    from orchestrator.studies.tracking_client import tracking_client

    try:
        tracking_client(sweep.tracking_uri).set_terminated(sweep.parent_run_id,
                                                        "KILLED" if sweep.cancelled else "FINISHED")
    except Exception as exc:  # noqa: BLE001 - the scales' runs are recorded; only the status is late
        print(f"warning: could not close the parent run ({type(exc).__name__}: {str(exc)[:200]})")
