"""The one launch path: ``podrun launch`` and every scale of ``podrun sweep`` go through :func:`launch`.

It resolves the job (spec, recipe, profile, ``--set``), checks that the data is there,
applies the preflight choice, submits to the backend, follows the job in the terminal
(:mod:`orchestrator.console`, which only prints) and, once the job has ended, records the
launcher's phases in the job's MLflow run (:mod:`orchestrator.studies.run_phases`) and sees
that the run's last records (the model, the run page) reach MLflow (:func:`finish_run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jobs.contract import exit_codes
from jobs.tracking.spool import Spool, SpoolError
from orchestrator.backends import get_backend
from orchestrator.console import follow_job, print_summary
from orchestrator.errors import DataError, PodrunError
from orchestrator.spec.jobspec import LaunchPlan
from orchestrator.spec.jobstore import JobRecord, is_terminal
from orchestrator.studies.run_phases import record_phases


@dataclass
class LaunchRequest:
    """What to launch, as the command line says it."""

    job: str  # a job spec, or RECIPE[:PRESET]
    assignments: list[str] = field(default_factory=list)  # --set KEY=VALUE
    backend: str | None = None  # default: the profile's scheduler
    on: str | None = None  # "slurm": Ray inside a Slurm allocation
    cluster_file: str | None = None
    resume: str | None = None  # "latest" or a job id
    preflight: bool = True  # False: --no-preflight
    detach: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # more MLflow run tags (a sweep's parent run)


def resolve(request: LaunchRequest, job_id: str | None = None) -> LaunchPlan:
    """The launch plan of ``request`` (see :func:`orchestrator.spec.resolve.load_job`).

    Raises:
        PodrunError: a file, a ``--set`` value or the resume target is wrong (one line).
    """
    from orchestrator.spec.resolve import load_job

    plan = load_job(request.job, request.assignments, cluster_file=request.cluster_file, backend=request.backend,
                    resume=request.resume, job_id=job_id)
    if not request.preflight:
        plan.job.preflight = None
    if request.on:
        plan.job.command += f" --on {request.on}"
    plan.job.tags |= request.tags
    return plan


def scheduler(plan: LaunchPlan, on: str | None) -> str:
    """The backend that starts the job: its own, or Slurm for ``--backend ray --on slurm``.

    Raises:
        PodrunError: ``--on slurm`` without ``--backend ray``.
    """
    if on:
        if plan.backend != "ray":
            raise PodrunError("--on slurm goes with --backend ray (Ray inside a Slurm allocation)")
        return "slurm"
    return plan.backend


def check_data(plan: LaunchPlan) -> None:
    """On the local backend, the data the recipe reads must be there (elsewhere preflight checks it on the nodes).

    Raises:
        DataError: a split is missing; the message says how to make it or where to point.
    """
    job = plan.job
    if job.backend != "local":
        return
    root = Path(job.data_dir)
    task = job.recipe.task_class()
    splits = task.data_paths(job.recipe.data, root)
    missing = next((path for paths in (splits or {}).values() for path in paths if not path.exists()), None)
    if missing is not None:
        raise DataError(f"data set not found ({missing}): {task.data_hint(job.recipe.data, root)}, or point "
                        "data.dataset (--set data.dataset=/path) or the profile's data_root at it")


def launch(request: LaunchRequest, on_submitted: Callable[[LaunchPlan, JobRecord], None] | None = None) -> int:
    """Resolve, check, submit and (unless detached) follow one job; return its exit code.

    ``on_submitted`` runs once the backend has the job (a sweep keeps its id).

    Raises:
        PodrunError: the job could not be resolved, its data is missing, or the backend refused it.
    """
    from orchestrator.spec.run_record import announce

    plan = resolve(request)
    backend = get_backend(scheduler(plan, request.on))
    check_data(plan)
    record = backend.submit(plan)
    print(f"submitted {record.job_id} ({record.backend} {record.native_id}, {plan.job.world_size} ranks)"
          f"  logs: {record.job_dir}/logs", flush=True)
    print(announce(plan), flush=True)
    if on_submitted is not None:
        on_submitted(plan, record)
    if request.detach:
        backend.detach(record)
        print(f"follow it with: podrun logs {record.job_id} -f")
        return exit_codes.SUCCESS
    # Local: rank 0's sender finishes the run once the ranks exit, and waits for our phases. Slurm: this launcher
    # sends what the ranks left once the allocation has ended, so rank 0 waits for its sender only briefly.
    attached = Spool(Path(record.job_dir) / "mlflow-spool") if record.backend == "local" else (
        local_spool(record) if record.backend == "slurm" else None)
    if attached is not None:
        attached.attach_launcher()
    try:
        code, ended = follow_job(backend, record)
        if ended is not None and is_terminal(ended.state):
            finish_run(ended, say=lambda text: print(text, flush=True))
            ended = backend.status(ended)  # no longer "registering"
    finally:
        if attached is not None:
            attached.detach_launcher()
    if ended is not None:
        print_summary(ended)  # last: the commands to copy end the output
    return code


def local_spool(record: JobRecord) -> Spool | None:
    """The job's MLflow spool where this machine can read it (not on a cluster reached over SSH)."""
    if record.extra.get("login"):
        return None
    folder = Path(record.extra.get("cluster_job_dir", record.job_dir))
    return Spool(folder / "mlflow-spool") if folder.is_dir() else None


def finish_run(ended: JobRecord, say: Callable[[str], None]) -> None:
    """Once the job has ended: its phases, then the records the ranks left (the model, the run page).

    They are sent from here, off the allocation; on the local backend rank 0's sender is at
    it already and this waits for it. ``device_release_s`` is ``run_stop`` to the job's end
    as the scheduler saw it (Slurm: the allocation's ``EndTime``) where nobody measured it closer.
    """
    spool = local_spool(ended)
    spool = spool if spool is not None and spool.exists() else None
    record_phases(ended, say=say, spool=spool)
    if spool is None:
        return
    from jobs.contract.metrics import DEVICE_RELEASE
    from jobs.tracking.sender import library_output, replay_spool
    from jobs.tracking.system_metrics import tracking_log

    spool.detach_launcher()
    started = time.monotonic()
    try:
        with library_output(tracking_log(spool.root.parent)):
            sent = replay_spool(spool.root, released_at=ended.extra.get("ended_at") or ended.finished_at,
                                run_info_dir=Path(ended.checkpoint_dir))
    except SpoolError as exc:
        say(f"[mlflow] records kept for podrun sync: {exc}")
        return
    release = spool.read_meta().get(DEVICE_RELEASE)
    released = f"the ranks exited {release:.1f} s after run_stop; " if release is not None else ""
    say(f"[mlflow] {released}the run's last records reached MLflow {time.monotonic() - started:.1f} s after "
        f"the job ended ({sent} sent from here)")
