"""Atomic checkpoints: written to a temporary file, fsynced, then renamed into place.

A preemption mid-write leaves at most a stray temporary file, never a truncated
checkpoint, so ``latest_checkpoint`` always returns one that loads.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_RE = re.compile(r"^ckpt-(\d{9})\.pt$")
RUN_INFO = "run.json"


def checkpoint_name(global_step: int) -> str:
    return f"ckpt-{global_step:09d}.pt"


def atomic_write_bytes(path: Path, write: Any) -> None:
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


def save_checkpoint(directory: Path, state: dict[str, Any], global_step: int, keep: int = 2) -> Path:
    """Write ``state`` atomically as ``ckpt-<step>.pt`` and keep only the ``keep`` newest."""
    path = Path(directory) / checkpoint_name(global_step)
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU (tensors are moved by their owners)."""
    return torch.load(path, map_location="cpu", weights_only=False)


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
