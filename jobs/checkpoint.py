"""Writing and loading checkpoints (torch): atomic, so a preemption mid-write loses nothing.

A checkpoint is written to a temporary file, fsynced, then renamed into place (see
:mod:`jobs.checkpoint_index`), so ``latest_checkpoint`` always returns one that loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jobs.checkpoint_index import (
    atomic_write_bytes,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    read_run_info,
    write_run_info,
)

__all__ = ["latest_checkpoint", "list_checkpoints", "load_checkpoint", "read_run_info", "save_checkpoint",
           "write_run_info"]


def save_checkpoint(directory: Path, state: dict[str, Any], global_step: int, keep: int = 2) -> Path:
    """Write ``state`` atomically as ``ckpt-<step>.pt`` and keep only the ``keep`` newest."""
    path = Path(directory) / checkpoint_name(global_step)
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU (tensors are moved by their owners)."""
    return torch.load(path, map_location="cpu", weights_only=False)
