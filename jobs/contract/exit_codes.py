"""Exit codes shared by the ranks and the launcher (kept free of heavy imports).

Every code a podrun process can exit with is here, and the README lists them. A rank
(``python -m jobs.run``) and ``podrun launch`` (which returns the job's code) use the
small ones; ``podrun`` itself uses the sysexits-style ones for problems it finds before
or instead of running a job, so a script can tell "fix the config" from "the run missed
its target".
"""

import json
import os
from pathlib import Path

SUCCESS = 0  # the recipe reached its target (run_stop status=success)
FAILED = 1  # an error
NOT_REACHED = 2  # all epochs ran without reaching the target (run_stop status=aborted)
PREEMPTED = 3  # stopped on a signal after writing a checkpoint; resume or requeue it
PREFLIGHT_FAILED = 4  # a node failed its preflight checks; training did not start
CHECKPOINT_FAILED = 5  # a checkpoint could not be written (disk full?); the earlier ones are intact
STALLED = 6  # the progress watchdog stopped the job: a rank made no progress within the timeout
IN_USE = 7  # another job is training from the same checkpoint folder (see jobs.rank.checkpoint_lock)
REPLACE = 8  # stopped after a checkpoint to replace a straggling node (replace.json names it; jobs.rank.stragglers)
CONFIG_ERROR = 64  # podrun: a usage or config error (a file, a --set value, a data set, a checkpoint)
BACKEND_ERROR = 69  # podrun: the scheduler (Slurm, Ray, the login host) is unreachable or refused
INTERRUPTED = 130  # podrun: Ctrl-C before a job was submitted

DESCRIPTIONS = {
    SUCCESS: "reached target",
    FAILED: "failed",
    NOT_REACHED: "finished without reaching target",
    PREEMPTED: "stopped after a checkpoint (resume with --resume)",
    PREFLIGHT_FAILED: "stopped before training: a node failed preflight (see the job log)",
    CHECKPOINT_FAILED: "could not write a checkpoint; the earlier ones are intact (resume with --resume)",
    STALLED: "a rank made no progress; stopped by the watchdog (resume with --resume)",
    IN_USE: "another job trains from this checkpoint folder",
    REPLACE: "stopped after a checkpoint to replace a straggling node",
}

OUTCOME_FILE = "outcome.json"


def write_outcome(job_dir: Path, code: int, note: str = "") -> None:
    """Rank 0 records the run's exit code: launchers that only see 0/1 (horovodrun) read it.

    ``note`` says more (the watchdog's diagnosis); the launcher shows it with the job's state.
    """
    path = Path(job_dir) / OUTCOME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{OUTCOME_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"exit_code": code, "outcome": DESCRIPTIONS.get(code, "failed"), "note": note}))
    os.replace(tmp, path)


def read_outcome(job_dir: Path) -> int | None:
    """The exit code rank 0 recorded, or None (no file, or not one this version wrote)."""
    try:
        return int(json.loads((Path(job_dir) / OUTCOME_FILE).read_text())["exit_code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_outcome_note(job_dir: Path) -> str:
    """The note rank 0 recorded with its exit code, or ""."""
    try:
        note = json.loads((Path(job_dir) / OUTCOME_FILE).read_text()).get("note", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return note if isinstance(note, str) else ""
