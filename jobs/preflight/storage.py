"""The storage check: the data root holds the recipe's splits and is readable; the checkpoint root is
writable and has room.

The task names each split's files or folders (:meth:`jobs.tasks.base.Task.data_paths`): a
file must be readable, a folder must hold a readable file (for images: an image in a class
folder). Synthetic data needs no data root (skipped). A small probe file is written, synced and
removed in the checkpoint folder (or its deepest existing parent), and the filesystem must
have ``min_free_gb`` free.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jobs.contract.job import ResolvedJob
from jobs.preflight.result import CheckResult, combine, failed, passed, skipped

PROBE_BYTES = 64 * 1024


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.read(4096)
        return True
    except OSError:
        return False


def _first_file(folder: Path) -> Path | None:
    """The first regular file under ``folder`` in sorted order (hidden entries left out)."""
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        found = entry if entry.is_file() else _first_file(entry) if entry.is_dir() else None
        if found is not None:
            return found
    return None


def _check_path(path: Path) -> str | None:
    """What is wrong with one split path (None: readable)."""
    if path.is_file():
        return None if _readable(path) else f"cannot read {path}"
    try:
        found = _first_file(path)
    except OSError as exc:
        return f"{path} unreadable ({exc.strerror or exc})"
    return None if found is not None and _readable(found) else f"no readable file in {path}"


def check_data(job: ResolvedJob) -> CheckResult:
    """The data root holds the recipe's splits, readable from this node."""
    splits = job.recipe.task_class().data_paths(job.recipe.data, Path(job.data_dir))
    if splits is None:
        return skipped("synthetic data, no data root")
    for paths in splits.values():
        problem = next((problem for problem in map(_check_path, paths) if problem), None)
        if problem:
            return failed(f"data: {problem}")
    return passed(f"data: {' and '.join(splits)} readable")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_checkpoint_root(folder: Path, min_free_gb: float, node: str) -> CheckResult:
    """The checkpoint folder (or its deepest existing parent: training creates the rest) takes a
    synced write, and its filesystem has ``min_free_gb`` free. Nothing is left behind."""
    problems = []
    target = _existing_parent(folder)
    probe = target / f".preflight-probe-{node}-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        problems.append(f"{target} not writable ({exc.strerror or exc})")
    finally:
        probe.unlink(missing_ok=True)
    free_gb = shutil.disk_usage(target).free / 1e9
    if free_gb < min_free_gb:
        problems.append(f"{free_gb:.2f} GB free, needs {min_free_gb:g} GB")
    if problems:
        return failed(f"checkpoint root: {'; '.join(problems)}")
    return passed(f"checkpoints: {free_gb:.0f} GB free")


def evaluate_storage(job: ResolvedJob, min_free_gb: float, node: str) -> CheckResult:
    """Both roots, in one cell."""
    return combine(check_data(job), check_checkpoint_root(Path(job.checkpoint_dir), min_free_gb, node))
