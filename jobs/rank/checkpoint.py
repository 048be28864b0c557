"""Writing and loading checkpoints (torch): atomic and checksummed, so nothing half-written is loaded.

A checkpoint is written to a temporary file, fsynced, its SHA-256 recorded beside it, then
renamed into place (see :mod:`jobs.contract.checkpoint_index`). :func:`load_resumable` takes the
newest checkpoint whose checksum matches and that loads, and says which ones it passed over.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from jobs.contract.checkpoint_index import (
    atomic_write_bytes,
    checkpoint_name,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    read_run_info,
    remove_checkpoint,
    write_run_info,
)
from jobs.contract.errors import CheckpointError, CheckpointWriteError

__all__ = ["latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_resumable", "read_run_info",
           "save_checkpoint", "write_run_info"]


def save_checkpoint(directory: Path, state: dict[str, Any], global_step: int, keep: int = 2) -> Path:
    """Write ``state`` atomically as ``ckpt-<step>.pt`` (with its checksum) and keep only the ``keep`` newest.

    Raises:
        CheckpointWriteError: the write failed (a full disk); nothing of it is left and the
            earlier checkpoints are untouched.
    """
    directory = Path(directory)
    path = directory / checkpoint_name(global_step)
    _remove_stale_temporaries(directory)
    try:
        atomic_write_bytes(path, lambda handle: torch.save(state, handle), checksum=True)
    except OSError as exc:
        kept = ", ".join(p.name for p in list_checkpoints(directory) if p != path) or "none"
        hint = "free space there or move checkpoint_root" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "check the folder"
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {exc.strerror or exc}; earlier checkpoints "
                                   f"kept: {kept}; {hint}, then resume with --resume") from None
    for old in list_checkpoints(directory)[:-keep]:
        remove_checkpoint(old)
    return path


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary files a killed writer left behind (only this rank writes here: the folder is locked)."""
    if not directory.is_dir():
        return
    mine = f".tmp-{os.getpid()}"
    for tmp in directory.glob(".ckpt-*.tmp-*"):
        if not tmp.name.endswith(mine):
            tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU (tensors are moved by their owners).

    Raises:
        CheckpointError: the file does not match its checksum or is not a checkpoint.
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is None:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - pickle, zip and EOF errors all mean "unreadable"
            problem = f"not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    raise CheckpointError(f"{path}: {problem}")


def load_resumable(directory: Path, preferred: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from, and its state.

    ``preferred`` (a checkpoint the backend kept) if it loads, else the newest checkpoint in
    ``directory`` that matches its checksum and loads; None when there is none at all. Each
    checkpoint passed over is named in a ``[resume] warning`` line.

    Raises:
        CheckpointError: checkpoints exist, but none of them can be loaded.
    """
    candidates = ([Path(preferred)] if preferred else []) + list(reversed(list_checkpoints(directory)))
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            print(f"[resume] warning: skipping {exc}", flush=True)
            continue
        if problems:
            print(f"[resume] warning: falling back to {path}", flush=True)
        return path, state
    if problems:
        raise CheckpointError(f"no valid checkpoint in {directory} to resume from: {'; '.join(problems)}; "
                              "restore one from a copy, or start afresh without --resume")
    return None
