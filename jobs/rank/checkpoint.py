"""Writing and loading checkpoints (torch): atomic and checksummed, so nothing half-written is loaded.

A checkpoint is written to a temporary file, fsynced, its SHA-256 recorded beside it, then
renamed into place (see :mod:`jobs.contract.checkpoint_index`). :func:`load_resumable` takes the
newest checkpoint whose checksum matches and that loads, and says which ones it passed over.

A checkpoint holds tensors, numbers, strings, lists and dicts only, and is loaded with
``torch.load(weights_only=True)``: torch's own unpickler, which builds those and calls nothing
else, so a planted file cannot run code. One that needs anything more is refused
(:class:`UntrustedCheckpointError`, exit 64), as is a folder or file someone else could write.
Checkpoints of the previous format hold numpy's RNG state as a numpy array: numpy's array and
dtype types are allowed for them, and nothing more.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.contract.checkpoint_index import (
    PREVIOUS_FORMAT_GLOBALS,
    atomic_write_bytes,
    checkpoint_name,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    read_run_info,
    refusal,
    remove_checkpoint,
    require_trusted,
    write_run_info,
)
from jobs.contract.errors import CheckpointError, CheckpointWriteError, UntrustedCheckpointError

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
    """Load a checkpoint on the CPU (tensors are moved by their owners), running nothing in it.

    Raises:
        UntrustedCheckpointError: it needs more than tensors, numbers, strings, lists and dicts
            to load, or someone else could have written it; nothing in it ran.
        CheckpointError: the file does not match its checksum or is not a checkpoint.
    """
    path = Path(path)
    require_trusted(path)
    problem = checkpoint_problem(path)
    if problem is None:
        try:
            return _load_tensors_only(path)
        except UntrustedCheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - zip, EOF and storage errors all mean "unreadable"
            problem = f"not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    raise CheckpointError(f"{path}: {problem}")


def previous_format_globals() -> list[Any]:
    """numpy's array and dtype types (:data:`PREVIOUS_FORMAT_GLOBALS`) for ``torch.serialization.safe_globals``.

    The previous format kept numpy's RNG state as numpy's own tuple, holding a uint32 array.
    """
    reconstruct = np.zeros(1, np.uint32).__reduce__()[0]
    allowed: list[Any] = [(reconstruct, "numpy._core.multiarray._reconstruct"),
                          (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    uint32_type = type(np.dtype(np.uint32))  # numpy.dtypes.UInt32DType (numpy >= 1.25): the array's dtype
    return allowed + ([uint32_type] if uint32_type is not np.dtype else [])


def _load_tensors_only(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``, after reading (not running) which globals the pickle names.

    Raises:
        UntrustedCheckpointError: the pickle names, or builds, anything beyond tensors and plain
            data (and numpy's array for the previous format).
        ValueError: not a zip archive, as ``torch.save`` writes.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError("not a zip archive, as torch.save writes")
    try:
        needs = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except pickle.UnpicklingError as exc:  # an opcode the weights-only unpickler never runs
        raise refusal(path, str(exc)) from None
    if needs - PREVIOUS_FORMAT_GLOBALS:
        raise refusal(path, "it names " + ", ".join(sorted(needs - PREVIOUS_FORMAT_GLOBALS)))
    allowed = torch.serialization.safe_globals(previous_format_globals()) if needs else contextlib.nullcontext()
    try:
        with allowed:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = [line.strip() for line in str(exc).splitlines() if "WeightsUnpickler error" in line]
        raise refusal(path, reason[0] if reason else str(exc).splitlines()[0]) from None


def load_resumable(directory: Path, preferred: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from, and its state.

    ``preferred`` (a checkpoint the backend kept) if it loads, else the newest checkpoint in
    ``directory`` that matches its checksum and loads; None when there is none at all. Each
    checkpoint passed over is named in a ``[resume] warning`` line.

    Raises:
        UntrustedCheckpointError: a checkpoint reached, or the folder, is refused (see
            :func:`load_checkpoint`): no fallback, the folder needs the user's eyes.
        CheckpointError: checkpoints exist, but none of them can be loaded.
    """
    found = list(reversed(list_checkpoints(directory)))
    if found:
        require_trusted(Path(directory))
    candidates = ([Path(preferred)] if preferred else []) + found
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except UntrustedCheckpointError:
            raise
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
