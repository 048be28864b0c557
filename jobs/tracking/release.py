"""The end of a run, once the ranks have exited: when they did (``device_release_s``), and the rest sent.

A rank's MLflow sender that outlives its rank (the local backend, ``--finish-here``) waits
here for every rank process to exit, records ``device_release_s`` (``run_stop`` to that
exit) and sends the model and run page, warm and off the devices. Finishers elsewhere (the
launcher, the Ray driver, ``podrun sync``) record it through :func:`record_release`.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import stat
import sys
import time
from pathlib import Path
from typing import Any

from jobs.contract import metrics as names
from jobs.contract.checkpoint_index import read_run_info

log = logging.getLogger("jobs.tracking.tracker")
# The functions below take a jobs.tracking.sender.Sender (typed Any: that module imports this one).

RANKS_FILE = "ranks.json"  # the local supervisor's record of its rank pids (orchestrator.backends.lifeline)
JOB_FILE = "job.json"  # the job's record, where the supervisor writes finished_at (orchestrator.spec.jobstore)
RANKS_EXIT_WAIT_S = 120  # how long a finisher waits for the ranks to exit before it sends anyway
LAUNCHER_WAIT_S = 60  # how long a finisher waits for an attached launcher's phases
POLL_S = 0.02


def device_release_s(run_info_dir: Path, released_at: float) -> float | None:
    """Seconds from ``run_stop`` (the phases' end in run.json) to ``released_at``; None without run.json."""
    phases_at = read_run_info(Path(run_info_dir)).get("phases_at")
    return None if phases_at is None else round(max(released_at - phases_at, 0.0), 3)


def record_release(sender: Any, run_info_dir: Path, released_at: float) -> float | None:
    """Queue ``device_release_s`` once per run (its value is kept in meta.json too); returns it."""
    if names.DEVICE_RELEASE in sender.meta:
        return sender.meta[names.DEVICE_RELEASE]
    seconds = device_release_s(run_info_dir, released_at)
    if seconds is None:
        return None
    record = {"kind": "metrics", "metrics": {names.DEVICE_RELEASE: seconds}, "step": 0,
              "timestamp": int(released_at * 1000)}
    sender.spool.append_next(record)
    sender.read_new()
    sender.meta[names.DEVICE_RELEASE] = seconds
    sender.spool.write_meta(sender.meta)
    return seconds


def finish_after_ranks(sender: Any, rank_pid: int, run_info_dir: Path | None) -> None:
    """Wait for every rank to exit, record ``device_release_s``, then send the rest (under the finish lock).

    This process is already warm (MLflow imported, the store open, matplotlib loaded), so the
    model and the run page cost their own work only; it uses no GPU (``CUDA_VISIBLE_DEVICES``
    is emptied before torch is imported for the model). An attached launcher adds its phases
    meanwhile: they go out before the spool is marked done.
    """
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    job_dir = sender.spool.root.parent
    seen_at = wait_for_ranks(job_dir, rank_pid)
    released_at = supervisor_end(job_dir) or seen_at
    sender.hold = False
    if released_at is not None and run_info_dir is not None:
        record_release(sender, run_info_dir, released_at)
    sender.read_new()
    sender.flush(force=True)
    deadline = time.monotonic() + LAUNCHER_WAIT_S
    while sender.spool.launcher_attached() and time.monotonic() < deadline:
        time.sleep(POLL_S)  # the launcher adds its phases once it sees the job end
    sender.read_new()
    cpu = sender.meta.setdefault("sender_cpu_s", {})
    cpu["after"] = round(cpu_s() - cpu.get("run", 0.0), 2)
    if sender.flush(force=True) and sender.finished:
        sender.mark_done()
    else:
        sender.spool.write_meta(sender.meta)


def wait_for_ranks(job_dir: Path, rank_pid: int) -> float | None:
    """When the last rank process exited (polled every 20 ms); None if they outlive ``RANKS_EXIT_WAIT_S``.

    The ranks are the supervisor's (``ranks.json`` in the job folder) and, without one (a
    rendered script run by hand), rank 0, this process's parent.
    """
    pids = set(_supervised_ranks(job_dir)) | {rank_pid}
    deadline = time.monotonic() + RANKS_EXIT_WAIT_S
    while time.monotonic() < deadline:
        pids = {pid for pid in pids if _running(pid)}
        if not pids:
            return time.time()
        time.sleep(POLL_S)
    log.warning("tracking: ranks %s still run %d s after the run ended; sending the model and run page anyway",
                sorted(pids), RANKS_EXIT_WAIT_S)
    return None


def supervisor_end(job_dir: Path, wait_s: float = 2.0) -> float | None:
    """When the local supervisor saw the last rank exit (``finished_at`` in ``job.json``; it polls every 50 ms).

    This process may have been busy when the ranks exited, so the supervisor's record is the
    closer one; None without a supervisor (``ranks.json`` absent) or a record in ``wait_s``.
    """
    if not (job_dir / RANKS_FILE).is_file():
        return None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            ended = json.loads((job_dir / JOB_FILE).read_text()).get("finished_at")
        except (OSError, ValueError, AttributeError):
            ended = None
        if isinstance(ended, (int, float)):
            return float(ended)
        time.sleep(POLL_S)
    return None


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _supervised_ranks(job_dir: Path) -> list[int]:
    try:
        return [int(pid) for pid in json.loads((job_dir / RANKS_FILE).read_text())["ranks"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process waiting to be reaped, a zombie, has released its devices)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def leave_rank() -> None:
    """Carry on without the rank: out of its session (its process group may be signalled as it ends), off its pipes.

    A pipe this process inherited (horovodrun reads its workers' output through pipes) would
    keep whoever reads it waiting until the model is registered: what went there (podrun's
    own warnings) goes to the tracking log instead, or nowhere. A log file stays.
    """
    try:
        os.setsid()
    except OSError:
        pass
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and stream not in (sys.stderr, sys.stdout, None) \
                and not is_file(stream.fileno()):
            handler.setStream(sys.stderr)
            stream.close()
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (0, 1, 2):
        if not is_file(fd):
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd)
            os.close(null)


def release_rank(ack_fd: int | None) -> None:
    """Tell the rank it may exit: what it had to send went out, or is kept for a finisher."""
    if ack_fd is None:
        return
    try:
        os.write(ack_fd, b".")
        os.close(ack_fd)
    except OSError:
        pass


def is_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return True  # closed: nothing to let go of


def preload_run_page() -> None:
    """Import matplotlib for the run page's charts during the run, not after it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except Exception:  # noqa: BLE001 - the run page says what failed when it draws
        pass
