"""Following a job from the terminal: a rich progress bar on a TTY, plain lines otherwise; commands never wrapped."""

from __future__ import annotations

import os
import shlex
import shutil
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
from jobs.tracking.system_metrics import tracking_log
from orchestrator.backends.base import Backend
from orchestrator.spec.jobstore import SUCCEEDED, JobRecord


def follow_job(backend: Backend, record: JobRecord) -> tuple[int, JobRecord | None]:
    """Show rank 0's output until the job ends; Ctrl-C cancels it (after a checkpoint).

    The rank log holds podrun's lines only: MLflow's own go to ``logs/tracking.log``
    (:func:`jobs.tracking.system_metrics.divert_library_output`). :func:`print_summary` says
    how the job ended.

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
                    # soft_wrap: a long line (a path, a URI) is never broken by rich, only folded by the terminal
                    progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
                continue
            description = f"epoch {parsed.epoch}/{parsed.epochs}"
            info = f"{parsed.rate:.0f} {parsed.unit}/s  loss {parsed.loss:.3f}  lr {parsed.lr:.4f}  eta {parsed.eta}"
            if bar is None:
                bar = progress.add_task(description, total=parsed.steps, info=info)
            progress.update(bar, description=description, completed=parsed.step, total=parsed.steps, info=info)


def print_summary(record: JobRecord) -> None:
    """Print how the job ended and what to run next (:func:`summary_lines`), never wrapped."""
    for line in summary_lines(record):
        print(line, flush=True)


def summary_lines(record: JobRecord) -> list[str]:
    """How the job ended, then lines a person copies: ``# ...`` comments, and commands and URLs one a line.

    Commands are plain lines (printed without wrapping, quoted for the shell), so each pastes
    as it is, whatever the terminal's width or wherever the output went.
    """
    lines = [f"{record.job_id}: {record.state} ({record.detail})"]
    if record.exit_code == exit_codes.PREEMPTED or record.state == "CANCELLED":
        lines.append("# to resume it: the same podrun launch command, with --resume")
    info = read_run_info(Path(record.checkpoint_dir))
    run_id = info.get("mlflow_run_id")
    log = tracking_log(record.extra.get("cluster_job_dir", record.job_dir))
    if run_id:
        lines += [f"# MLflow run {run_id}", f"# MLflow's own log lines: {log}"]
        lines += ui_lines(record.tracking_uri, run_id, info.get("mlflow_experiment_id"))
    elif spool_pending(Path(record.job_dir) / "mlflow-spool"):
        lines += [f"# MLflow was unreachable (its log: {log}); the records are kept. Send them with:",
                  f"podrun sync {shlex.quote(record.job_id)}"]
    return lines


def ui_lines(tracking_uri: str, run_id: str, experiment_id: str | None = None) -> list[str]:
    """How to open a run in the MLflow UI: a comment, then the command and the page, one a line.

    A password in the URI shows as ``***``.
    """
    tracking_uri = mask_uri(tracking_uri)
    page = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"#/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return ["# open the run in the MLflow UI:", f"{tracking_uri.rstrip('/')}/{page}"]
    command = shlex.join([mlflow_program(), "ui", "--backend-store-uri", tracking_uri, "--port", "5000"])
    return ["# open the run in the MLflow UI: start it, then open the page", command,
            f"http://127.0.0.1:5000/{page}"]


def mlflow_program() -> str:
    """``mlflow`` when the shell finds this environment's own; else its full path (a venv not activated)."""
    own = Path(sys.executable).parent / "mlflow"
    found = shutil.which("mlflow")
    if not own.is_file() or (found is not None and Path(found).resolve() == own.resolve()):
        return "mlflow"
    return str(own)
