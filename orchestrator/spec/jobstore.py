"""Job records: one ``job.json`` per submitted job under ``$PODRUN_HOME/jobs/<id>/``.

``podrun status|logs|cancel|runs`` read these records and ask the job's backend for
anything live.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.contract.private_files import write_private
from orchestrator.errors import PodrunError

# One explicit state table for every backend (see each backend's *_STATES mapping).
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, PREEMPTED, UNKNOWN = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED", "UNKNOWN")
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, PREEMPTED})


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES


@dataclass
class JobRecord:
    job_id: str
    name: str
    backend: str
    recipe: str
    cluster: str
    job_dir: str
    checkpoint_dir: str
    tracking_uri: str
    world_size: int
    native_id: str = ""  # a pid, a Slurm job id or a Ray submission id
    state: str = PENDING
    detail: str = ""
    exit_code: int | None = None
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.job_dir) / "job.json"

    def save(self) -> None:
        """Write the record atomically (a reader never sees half a file), readable by its owner only."""
        tmp = self.path.with_name(f".job.json.tmp-{os.getpid()}")
        write_private(tmp, json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> JobRecord:
        """Read a record.

        Raises:
            OSError: it cannot be read.
            ValueError: it is not a job record (not JSON, or fields of the wrong type).
        """
        return _record_adapter().validate_json(Path(path).read_bytes())


@functools.cache
def _record_adapter() -> Any:
    """pydantic's validator of a record, built once per process (about 4 ms each time: a launch polls the record)."""
    from pydantic import TypeAdapter

    return TypeAdapter(JobRecord)


def jobs_root(home: Path) -> Path:
    return home / "jobs"


def find_record(home: Path, job_id: str) -> JobRecord:
    """The record of ``job_id`` (a unique prefix is enough, or a native id such as a Slurm job id).

    Raises:
        PodrunError: no job, or several jobs, match.
    """
    records = list_records(home)
    exact = [r for r in records if job_id in (r.job_id, r.native_id)]
    matches = exact or [r for r in records if r.job_id.startswith(job_id)]
    if not matches:
        _unreadable_record(home, job_id)
        raise PodrunError(f"no job '{job_id}' under {jobs_root(home)}: 'podrun runs' lists the recent ones")
    if len(matches) > 1:
        names = ", ".join(r.job_id for r in matches[:5])
        raise PodrunError(f"'{job_id}' matches several jobs ({names}); give more of the id")
    return matches[0]


def _unreadable_record(home: Path, job_id: str) -> None:
    """Say so when ``job_id``'s folder is there but its record is damaged.

    Raises:
        PodrunError: the job's ``job.json`` cannot be read.
    """
    for path in sorted(jobs_root(home).glob(f"{glob.escape(job_id)}*/job.json"))[:1]:
        try:
            JobRecord.load(path)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0][:120]
            raise PodrunError(f"{path}: not a readable job record ({type(exc).__name__}: {reason}); the job's "
                              f"logs and checkpoints are still in {path.parent}") from None


def list_records(home: Path) -> list[JobRecord]:
    """Every readable job record, newest first."""
    records = []
    for path in jobs_root(home).glob("*/job.json"):
        try:
            records.append(JobRecord.load(path))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(records, key=lambda r: r.submitted_at, reverse=True)
