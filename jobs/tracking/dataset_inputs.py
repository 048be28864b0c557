"""The run's datasets in MLflow (``log_inputs``): train and val, each with its source path and a digest.

Rank 0 only names the splits (:func:`dataset_records`, no file system walk on the
training path); the sender lists the files when it sends the record
(:func:`send_dataset`): the digest is a SHA-256 of the sorted ``relative path<TAB>size``
lines, so two runs on different data show different digests in the UI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from jobs.contract.job import ResolvedJob

log = logging.getLogger("jobs.tracking.tracker")

CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT
DIGEST_CHARS = 16  # the store keeps 36 characters


def dataset_records(job: ResolvedJob) -> list[dict[str, Any]]:
    """One ``dataset`` record per split the job reads (none for synthetic data)."""
    data = job.recipe.data
    splits = job.recipe.task_class().data_paths(data, Path(job.data_dir))
    if splits is None:  # synthetic: nothing on disk
        return []
    name = getattr(data, "dataset", job.recipe.name)
    return [{"kind": "dataset", "name": f"{name}-{context}", "context": context,
             "paths": [str(path) for path in paths]} for context, paths in splits.items()]


def file_list(paths: list[Path]) -> list[tuple[str, int]]:
    """``(path relative to its parent, size)`` of every file under ``paths``, sorted.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    found: list[tuple[str, int]] = []
    for path in paths:
        if path.is_file():
            found.append((path.name, path.stat().st_size))
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist")
        for folder, _, names in os.walk(path):
            rel = os.path.relpath(folder, path.parent)
            found.extend((os.path.join(rel, name), os.path.getsize(os.path.join(folder, name))) for name in names)
    return sorted(found)


def digest(files: list[tuple[str, int]]) -> str:
    """A short SHA-256 of the file list (names and sizes)."""
    hasher = hashlib.sha256()
    for name, size in files:
        hasher.update(f"{name}\t{size}\n".encode())
    return hasher.hexdigest()[:DIGEST_CHARS]


def send_dataset(client: Any, run_id: str, record: dict[str, Any]) -> None:
    """Log one split as a run input; a split that cannot be listed is skipped with a warning.

    Raises what MLflow raises (the sender keeps the record and retries).
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    paths = [Path(path) for path in record["paths"]]
    try:
        files = file_list(paths)
    except OSError as exc:
        log.warning("tracking: dataset %s not logged: %s", record["name"], exc)
        return
    source = paths[0] if len(paths) == 1 else paths[0].parent
    profile = {"files": len(files), "bytes": sum(size for _, size in files)}
    dataset = Dataset(name=record["name"], digest=digest(files), source_type="local",
                      source=json.dumps({"uri": str(source)}), profile=json.dumps(profile))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, record["context"])])])
