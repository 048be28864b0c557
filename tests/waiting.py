"""Polling helpers shared by the integration tests (bounded in time; they fail with what they waited for)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.cli import main

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED"}


def wait_for_text(path: Path, needle: str, timeout: float = 240) -> None:
    """Wait until ``needle`` appears in the file at ``path``."""
    wait_until(lambda: path.exists() and needle in path.read_text(errors="replace"), f"{needle!r} in {path}",
               timeout)


def wait_until(check: Callable[[], object], what: str, timeout: float, every: float = 0.5) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


BUSY_REGISTERING = "registering: the model and run page are going to MLflow"


def wait_state(job_id: str, capsys, states: set[str] = TERMINAL, timeout: float = 300, settle: bool = True) -> str:
    """Poll ``podrun status`` until the job is in one of ``states``; return the status line.

    With ``settle``, an ended job whose last MLflow records are still being sent (the ranks
    have exited; rank 0's sender or the launcher is at it) is waited for too.
    """

    def status_line() -> str | None:
        main(["status", job_id])
        line = capsys.readouterr().out.strip()
        if settle and BUSY_REGISTERING in line:
            return None
        return line if line.split()[1] in states else None

    return wait_until(status_line, f"job {job_id} in {sorted(states)}", timeout, every=1.0)


def status_logs_then_cancel(job_id: str, capsys) -> None:
    """On a running job: ``podrun status`` says RUNNING, ``logs`` shows training, ``cancel`` ends it."""
    assert "RUNNING" in wait_state(job_id, capsys, {"RUNNING"})
    assert main(["logs", job_id]) == 0
    assert "[train] epoch 1/50" in capsys.readouterr().out
    assert main(["cancel", job_id]) == 0
    capsys.readouterr()
    assert "CANCELLED" in wait_state(job_id, capsys, {"CANCELLED", "FAILED", "SUCCEEDED"})
