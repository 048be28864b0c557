"""The checkpoint folder's contract: checkpoint names, which ones are complete, and ``run.json``.

A checkpoint folder holds ``ckpt-<global step>.pt`` files, each written whole or not at
all (:func:`atomic_write_bytes`), and ``run.json``, the job's run record: its MLflow run
id, tracking URI and attempts. The launcher reads both (``--resume``, the end-of-run
summary) without importing torch; :mod:`jobs.checkpoint` writes and loads the tensors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_RE = re.compile(r"^ckpt-(\d{9})\.pt$")
RUN_INFO = "run.json"


def checkpoint_name(global_step: int) -> str:
    return f"ckpt-{global_step:09d}.pt"


def atomic_write_bytes(path: Path, write: Callable[[Any], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_run_info(directory: Path) -> dict[str, Any]:
    """The job's run record (MLflow run id, time-to-train so far), or {}."""
    path = Path(directory) / RUN_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_run_info(directory: Path, info: dict[str, Any]) -> None:
    """Atomically replace the job's run record."""
    payload = json.dumps(info, indent=2, sort_keys=True).encode()
    atomic_write_bytes(Path(directory) / RUN_INFO, lambda handle: handle.write(payload))


def update_run_info(directory: Path, **fields: Any) -> dict[str, Any]:
    """Set ``fields`` in the job's run record, under a lock: the rank and its MLflow sender both write it."""
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".{RUN_INFO}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = read_run_info(directory)
        info.update(fields)
        write_run_info(directory, info)
    return info
