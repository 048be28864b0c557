"""Following a job from the terminal: a rich progress bar on a TTY, plain lines otherwise."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import read_run_info
from jobs.contract.progress import parse_progress
from jobs.contract.secret_filter import mask_uri
from jobs.tracking.spool import spool_pending
from orchestrator.backends.base import Backend
from orchestrator.spec.jobstore import SUCCEEDED, JobRecord


def follow_job(backend: Backend, record: JobRecord) -> tuple[int, JobRecord | None]:
    """Show rank 0's output until the job ends; Ctrl-C cancels it (after a checkpoint).

    When this output goes away (``podrun launch JOB | tee log``, and tee dies), following
    stops: a local job then stops after a checkpoint (its supervisor sees the launcher
    leave), a Slurm or Ray job goes on.

    Returns the job's exit code (see :mod:`jobs.contract.exit_codes`) and its final record;
    :data:`jobs.contract.exit_codes.INTERRUPTED` and None when the output went away first.
    """
    console = Console()
    try:
        try:
            _show(backend.logs(record, follow=True), console)
        except KeyboardInterrupt:
            backend.cancel(record)  # first: printing may fail if the terminal's pipe is gone
            console.print("[yellow]interrupted: asking the ranks to checkpoint and stop...[/]")
            _show(backend.logs(record, follow=True), console, skip_seen=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        print(f"podrun: output closed; {record.job_id} is no longer followed", file=sys.stderr)
        return exit_codes.INTERRUPTED, None
    backend.detach(record)  # it ended: nothing to hold on to
    record = backend.status(record)
    _summary(record, console)
    code = record.exit_code if record.exit_code is not None else (0 if record.state == SUCCEEDED else 1)
    return code, record


def _show(lines: Iterator[str], console: Console, skip_seen: bool = False) -> None:
    if not console.is_terminal:
        for line in lines:
            if not skip_seen:
                print(line, flush=True)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = None
        for line in lines:
            parsed = parse_progress(line)
            if parsed is None:
                if not skip_seen:
                    progress.console.print(line, markup=False, highlight=False)
                continue
            description = f"epoch {parsed.epoch}/{parsed.epochs}"
            info = f"{parsed.rate:.0f} {parsed.unit}/s  loss {parsed.loss:.3f}  lr {parsed.lr:.4f}  eta {parsed.eta}"
            if bar is None:
                bar = progress.add_task(description, total=parsed.steps, info=info)
            progress.update(bar, description=description, completed=parsed.step, total=parsed.steps, info=info)


def _summary(record: JobRecord, console: Console) -> None:
    console.print(f"{record.job_id}: {record.state} ({record.detail})", markup=False)
    info = read_run_info(Path(record.checkpoint_dir))
    run_id = info.get("mlflow_run_id")
    if record.exit_code == exit_codes.PREEMPTED or record.state == "CANCELLED":
        console.print("resume with: podrun launch <same job> --resume", markup=False)
    if run_id:
        console.print(f"MLflow run {run_id} in {mask_uri(record.tracking_uri)}", markup=False)
        console.print(ui_hint(record.tracking_uri, run_id, info.get("mlflow_experiment_id")), markup=False)
    elif spool_pending(Path(record.job_dir) / "mlflow-spool"):
        console.print(f"MLflow was unreachable; records are kept: podrun sync {record.job_id}", markup=False)


def ui_hint(tracking_uri: str, run_id: str, experiment_id: str | None = None) -> str:
    """How to open a run in the MLflow UI (a password in the URI shows as ``***``)."""
    tracking_uri = mask_uri(tracking_uri)
    page = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"#/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"open: {tracking_uri.rstrip('/')}/{page}"
    return (f"open it: mlflow ui --backend-store-uri {tracking_uri} --port 5000, "
            f"then http://127.0.0.1:5000/{page}")
