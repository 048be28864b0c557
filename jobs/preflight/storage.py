"""The storage check: the data root holds the recipe's splits and is readable; the checkpoint root is
writable and has room.

Images need ``train/`` and ``val/`` with at least one readable image in a class folder;
parallel text needs the train and valid split files (:func:`jobs.data.parallel_text.split_paths`).
Synthetic data needs no data root (skipped). A small probe file is written, synced and
removed in the checkpoint folder (or its deepest existing parent), and the filesystem must
have ``min_free_gb`` free.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jobs.data.listing import IMAGE_SUFFIXES
from jobs.data.parallel_text import split_paths
from jobs.job import ResolvedJob
from jobs.preflight.result import CheckResult, combine, failed, passed, skipped

PROBE_BYTES = 64 * 1024


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.read(4096)
        return True
    except OSError:
        return False


def _first_image(split_dir: Path) -> Path | None:
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for entry in sorted(class_dir.iterdir()):
            if entry.name.lower().endswith(IMAGE_SUFFIXES):
                return entry
    return None


def check_data(job: ResolvedJob) -> CheckResult:
    """The data root holds the recipe's splits, readable from this node."""
    data, root = job.recipe.data, Path(job.data_dir)
    if getattr(data, "backend", None) == "synthetic":
        return skipped("synthetic data, no data root")
    if data.kind == "parallel_text":
        files = split_paths(root, data.train_split, data) + split_paths(root, data.valid_split, data)
        bad = [str(p) for p in files if not _readable(p)]
        return failed(f"data: cannot read {', '.join(bad)}") if bad else passed(f"data: {len(files)} split files")
    for split in ("train", "val"):
        folder = root / split
        try:
            image = _first_image(folder)
        except OSError as exc:
            return failed(f"data: {folder} unreadable ({exc.strerror or exc})")
        if image is None or not _readable(image):
            return failed(f"data: no readable image in {folder}")
    return passed("data: train and val readable")


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
