"""A validation batch saved for the model's MLflow entry: its input example and the ONNX check.

Rank 0 calls :func:`save_validation_batch` after ``run_stop`` (not part of time-to-train):
it reads the first batch of its validation shard and writes the model's inputs, as NumPy
arrays in the order ``forward`` takes them, to an ``.npz`` file. The sender logs the
model with it (:mod:`jobs.tracking.model_registry`) and ``podrun export`` compares ONNX Runtime
with torch on it.

The task names the inputs (:attr:`jobs.tasks.base.Task.input_names`) and picks them out of a
batch (:meth:`jobs.tasks.base.Task.model_inputs`): ResNet's ``images`` float32
``[N, 3, H, W]`` (normalised, as the model sees them), the Transformer's ``src`` and
``tgt_in`` int64 ``[N, S]`` and ``[N, T]`` (teacher forcing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAX_ROWS = 8


def batch_arrays(task: Any, batch: Any, rows: int = MAX_ROWS) -> dict[str, np.ndarray]:
    """The model inputs of one loader batch, at most ``rows`` of them, as contiguous CPU arrays."""
    tensors = task.model_inputs(batch)
    return {name: np.ascontiguousarray(tensor[:rows].detach().float().cpu().numpy()
                                       if tensor.is_floating_point() else tensor[:rows].cpu().numpy())
            for name, tensor in tensors.items()}


def save_validation_batch(task: Any, loader: Any, epoch: int, path: Path) -> Path | None:
    """Write the first validation batch's model inputs to ``path``; None if the loader yields nothing."""
    batches = loader.epoch(epoch)
    try:
        batch = next(iter(batches), None)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if batch is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **batch_arrays(task, batch))
    return path


def load_validation_batch(path: Path, input_names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """The arrays :func:`save_validation_batch` wrote, in ``forward``'s order (``input_names``).

    Raises:
        KeyError: the file lacks one of ``input_names``.
        OSError: the file cannot be read.
    """
    with np.load(path) as saved:
        return tuple(saved[name] for name in input_names)
