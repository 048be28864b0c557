"""One job at a time trains from a checkpoint folder: an ``flock`` that rank 0 holds while it runs.

Two ``podrun launch --resume`` of the same job would otherwise both load the same
checkpoint and write over each other's. Rank 0 takes the lock before anything touches the
folder (the MLflow run in ``run.json`` included) and keeps it until its process ends; the
kernel drops it when the process dies, however it dies. The lock file holds who has it
(job id, host, pid, since when), so the one refused can say so, and ``podrun launch
--resume`` checks it before it starts anything (:func:`check_free`).

On a shared file system the lock works where ``flock`` does across nodes (NFSv4, Lustre
mounted with ``-o flock``, GPFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from jobs.contract import exit_codes
from jobs.contract.errors import PodrunError

LOCK_FILE = ".podrun.lock"
WAIT_S = 30.0  # a restarted rank 0 waits this long for the one before it to be gone


class CheckpointInUse(PodrunError):
    """Another job trains from this checkpoint folder."""

    exit_code = exit_codes.IN_USE


@contextlib.contextmanager
def hold(directory: Path, job_id: str, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold the folder's lock for the ``with`` block (and at most the life of this process).

    Raises:
        CheckpointInUse: another process held it for all of ``wait_s`` seconds.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + wait_s
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                raise CheckpointInUse(in_use_message(directory, _holder(handle)))
            time.sleep(0.5)
        handle.truncate(0)
        handle.write(json.dumps({"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.time()}))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_free(directory: Path) -> None:
    """Refuse now, before a job starts, if a running job holds the folder's lock.

    Raises:
        CheckpointInUse: it is held; the message names the holder.
    """
    path = Path(directory) / LOCK_FILE
    if not path.is_file():
        return
    with open(path, "a+") as handle:
        if _try_lock(handle):
            fcntl.flock(handle, fcntl.LOCK_UN)
            return
        raise CheckpointInUse(in_use_message(Path(directory), _holder(handle)))


def in_use_message(directory: Path, holder: dict) -> str:
    who = f"job {holder['job_id']}" if holder.get("job_id") else "another job"
    where = f" (rank 0, pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = holder.get("since")
    where += f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))})" if isinstance(since, float) \
        else ")"
    stop = f"podrun cancel {holder['job_id']}" if holder.get("job_id") else "stop it"
    return (f"checkpoint folder {directory} is in use by {who}{where}: one job at a time trains from it; "
            f"wait for that one to end, or {stop}")


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(handle: IO[str]) -> dict:
    handle.seek(0)
    try:
        holder = json.loads(handle.read())
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
