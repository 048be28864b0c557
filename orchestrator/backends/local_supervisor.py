"""The local backend's supervisor: ``python -m orchestrator.backends.local_supervisor JOB_DIR [LIFELINE_FD]``.

It owns the rank processes of one job (:mod:`orchestrator.backends.local` starts it in its
own session): it starts them with the standard env contract, forwards SIGTERM/SIGUSR2,
stops the others when one fails (like ``srun --kill-on-bad-exit``), and records the outcome
in ``job.json``.

What it starts is in the job's ``supervisor.json``, written by the launcher: each process's
argv, its log and its environment as the profile wrote it (``${VAR}`` references kept; they
expand here, from the environment ``podrun launch`` gave this process, so secrets never
reach a file). So this process loads neither pydantic nor the job's models: the ranks start
about 0.2 s sooner.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobs.contract import exit_codes
from jobs.contract.env_refs import expand_string
from jobs.contract.placement import free_port
from orchestrator.backends.lifeline import Lifeline, descendants, die_with_parent, write_rank_pids
from orchestrator.spec.jobstore import CANCELLED, FAILED, PREEMPTED, SUCCEEDED, JobRecord

SUPERVISOR_FILE = "supervisor.json"
EXIT_STATES = {
    exit_codes.SUCCESS: SUCCEEDED,
    exit_codes.NOT_REACHED: FAILED,
    exit_codes.PREEMPTED: PREEMPTED,
    exit_codes.REPLACE: PREEMPTED,  # stopped after a checkpoint for a straggler's host: here it just ends (--resume)
}
RANK_GRACE_S = 60
STALL_GRACE_S = 5  # after a rank reports a stall: the others record theirs, then SIGKILL
POLL_S = 0.05  # how often the supervisor and the log follower look: a job's end is seen within this
PORT = "MASTER_PORT"  # chosen here, free on this machine when the ranks start


def rank_descendants(pid: int) -> list[int]:
    """Processes under ``pid`` that run ``jobs.run``."""
    found = []
    for child in descendants(pid):
        try:
            if b"jobs.run" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def load_record(path: Path) -> JobRecord:
    """The job's record, as the launcher wrote it (pydantic's check only if it does not fit: a damaged file)."""
    try:
        return JobRecord(**json.loads(path.read_bytes()))
    except (TypeError, ValueError):
        return JobRecord.load(path)  # says what is wrong


class Supervisor:
    """Runs the processes of ``JOB_DIR/supervisor.json``; owns them until they exit."""

    def __init__(self, job_dir: Path, lifeline_fd: int | None = None) -> None:
        self.job_dir = job_dir
        self.record = load_record(job_dir / "job.json")
        self.spec: dict[str, Any] = json.loads((job_dir / SUPERVISOR_FILE).read_text())
        self.procs: list[subprocess.Popen] = []
        self.cancelled = False
        self.lifeline = Lifeline(lifeline_fd)
        self.launcher_gone = False
        self.first_failure: tuple[int, int] | None = None  # (rank, exit code) of the first rank that failed

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGUSR2, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        port = str(free_port())
        logs = self.job_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with_parent = die_with_parent()  # a killed supervisor leaves no orphan ranks: they get SIGTERM
        self.started_at = time.time()  # the job's start, for its phase breakdown (queued ends here)
        preflight = self.spec.get("preflight")
        if preflight:
            code = self._preflight(preflight, logs, port)
            if code != exit_codes.SUCCESS or self.spec.get("preflight_only"):
                return self._record([code], "preflight passed" if code == exit_codes.SUCCESS else None)
        for launch in self.spec["launches"]:
            with open(logs / launch["log"], "ab") as log:
                self.procs.append(subprocess.Popen(launch["argv"], env=self._environment(launch["env"], port),
                                                   cwd=self.spec["cwd"], stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, preexec_fn=with_parent))
        write_rank_pids(self.job_dir, [proc.pid for proc in self.procs])
        codes = self._wait()
        return self._record(codes)

    def _environment(self, env: dict[str, str], port: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This process's environment plus ``env``, its ``${VAR}`` expanded from it (what podrun launch gave us)."""
        expanded = {key: expand_string(value, os.environ) for key, value in env.items()}
        if PORT in expanded:
            expanded[PORT] = port
        return os.environ | expanded | (extra or {})

    def _preflight(self, preflight: dict[str, Any], logs: Path, port: str) -> int:
        """The node checks first (``python -m jobs.preflight``, one process per rank); rank 0's verdict."""
        extra = {"PODRUN_PREFLIGHT_ATTEMPT": f"local-{time.strftime('%Y%m%d-%H%M%S')}",
                 "PODRUN_PREFLIGHT_T0": str(time.time())}
        for rank, env in enumerate(preflight["envs"]):
            with open(logs / f"rank{rank}.log", "ab") as log:
                self.procs.append(subprocess.Popen(preflight["argv"], env=self._environment(env, port, extra),
                                                   cwd=self.spec["cwd"], stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL))
        codes = self._wait()
        self.procs = []
        return codes[0]

    def _forward(self, signum: int, _frame: object) -> None:
        """Pass a stop signal to the ranks themselves (they checkpoint and exit).

        Under Horovod the ranks are horovodrun's grandchildren in their own sessions, and
        horovodrun's own SIGTERM handling can hang once its workers are gone, so the signal
        goes to the ``jobs.run`` processes, not to horovodrun.
        """
        self.cancelled = self.cancelled or signum in (signal.SIGTERM, signal.SIGINT)
        forwarded = signal.SIGTERM if signum == signal.SIGINT else signum
        for proc in self.procs:
            if proc.poll() is not None:
                continue
            ranks = rank_descendants(proc.pid) if self.spec["comm"] == "horovod" else [proc.pid]
            for pid in ranks:
                try:
                    os.kill(pid, forwarded)
                except ProcessLookupError:
                    pass

    def _wait(self) -> list[int]:
        """Wait for every rank; if one fails, give the others a grace period, then kill them.

        A rank that reports a stalled peer (the watchdog) gets the others killed after
        ``STALL_GRACE_S``: a stopped rank cannot checkpoint, but the others' watchdogs fire
        too and need a moment to record theirs (rank 0 queues the stacks for MLflow).
        A launcher that dies stops the job (after a checkpoint).
        """
        failed_at: float | None = None
        while any(p.poll() is None for p in self.procs):
            if self.lifeline.gone():
                self.launcher_gone = True
                self._forward(signal.SIGTERM, None)
            if failed_at is None and self._failed():
                failed_at = time.time()
                if self.first_failure[1] != exit_codes.STALLED:
                    self._signal_all(signal.SIGTERM)
            stalled = self.first_failure is not None and self.first_failure[1] == exit_codes.STALLED
            if failed_at and time.time() - failed_at > (STALL_GRACE_S if stalled else RANK_GRACE_S):
                self._signal_all(signal.SIGKILL)
            time.sleep(POLL_S)
        return [p.returncode for p in self.procs]

    def _failed(self) -> bool:
        for rank, proc in enumerate(self.procs):
            if proc.poll() not in (None, 0, exit_codes.NOT_REACHED, exit_codes.PREEMPTED, exit_codes.REPLACE):
                self.first_failure = (rank, proc.returncode)
                return True
        return False

    def _signal_all(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def _record(self, codes: list[int], detail: str | None = None) -> int:
        code = codes[0] if all(c == codes[0] for c in codes) else next(c for c in codes if c != 0)
        if self.first_failure:
            code = self.first_failure[1]
        if code == exit_codes.SUCCESS or code < 0:
            code = exit_codes.read_outcome(self.job_dir) or (code if code >= 0 else exit_codes.FAILED)
        record = load_record(self.record.path)
        record.exit_code = code
        record.state = EXIT_STATES.get(code, FAILED)
        if self.cancelled and record.state in (PREEMPTED, FAILED):
            record.state = CANCELLED
        record.detail = detail or self._detail(code, codes)
        record.finished_at = time.time()
        record.extra["started_at"] = self.started_at
        record.save()
        return code

    def _detail(self, code: int, codes: list[int]) -> str:
        detail = exit_codes.DESCRIPTIONS.get(code, f"rank exit codes {codes}")
        note = exit_codes.read_outcome_note(self.job_dir)
        detail += f": {note}" if note else ""
        if self.first_failure:
            rank, first = self.first_failure
            how = f"killed by {signal.Signals(-first).name}" if first < 0 else f"exited {first}"
            detail = f"rank {rank} {how} first; the others were stopped ({detail})"
        if self.launcher_gone:
            detail = f"its launcher (podrun launch) went away, so it stopped: {detail}"
        return detail


if __name__ == "__main__":
    sys.exit(Supervisor(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None).run())
