"""Exit codes shared by the ranks and the launcher (kept free of heavy imports)."""

import json
import os
from pathlib import Path

SUCCESS = 0  # the recipe reached its target (run_stop status=success)
FAILED = 1  # an error
NOT_REACHED = 2  # all epochs ran without reaching the target (run_stop status=aborted)
PREEMPTED = 3  # stopped on a signal after writing a checkpoint; resume or requeue it
PREFLIGHT_FAILED = 4  # a node failed its preflight checks; training did not start

DESCRIPTIONS = {
    SUCCESS: "reached target",
    FAILED: "failed",
    NOT_REACHED: "finished without reaching target",
    PREEMPTED: "stopped after a checkpoint (resume with --resume)",
    PREFLIGHT_FAILED: "stopped before training: a node failed preflight (see the job log)",
}

OUTCOME_FILE = "outcome.json"


def write_outcome(job_dir: Path, code: int) -> None:
    """Rank 0 records the run's exit code: launchers that only see 0/1 (horovodrun) read it."""
    path = Path(job_dir) / OUTCOME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{OUTCOME_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"exit_code": code, "outcome": DESCRIPTIONS.get(code, "failed")}))
    os.replace(tmp, path)


def read_outcome(job_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(job_dir) / OUTCOME_FILE).read_text())["exit_code"])
    except (OSError, ValueError, KeyError):
        return None
