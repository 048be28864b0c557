"""A validation batch saved for the model's MLflow entry: its input example and the ONNX check.

Rank 0 calls :func:`save_validation_batch` after ``run_stop`` (not part of time-to-train):
it reads the first batch of its validation shard and writes the model's inputs, as NumPy
arrays in the order ``forward`` takes them, to an ``.npz`` file. The sender logs the
model with it (:mod:`jobs.model_registry`) and ``podrun export`` compares ONNX Runtime
with torch on it.

- ResNet: ``images`` float32 ``[N, 3, H, W]`` (normalised, as the model sees them).
- Transformer: ``src`` int64 ``[N, S]`` and ``tgt_in`` int64 ``[N, T]`` (teacher forcing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAX_ROWS = 8
INPUT_NAMES = {"resnet": ("images",), "transformer": ("src", "tgt_in")}


def batch_arrays(arch: str, batch: Any, rows: int = MAX_ROWS) -> dict[str, np.ndarray]:
    """The model inputs of one loader batch, at most ``rows`` of them, as contiguous CPU arrays."""
    if arch == "transformer":
        tensors = {"src": batch.src, "tgt_in": batch.tgt_in}
    else:
        tensors = {"images": batch[0]}
    return {name: np.ascontiguousarray(tensor[:rows].detach().float().cpu().numpy()
                                       if tensor.is_floating_point() else tensor[:rows].cpu().numpy())
            for name, tensor in tensors.items()}


def save_validation_batch(arch: str, loader: Any, epoch: int, path: Path) -> Path | None:
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
    np.savez(path, **batch_arrays(arch, batch))
    return path


def load_validation_batch(path: Path, arch: str) -> tuple[np.ndarray, ...]:
    """The arrays :func:`save_validation_batch` wrote, in ``forward``'s order.

    Raises:
        KeyError: the file lacks an input of ``arch``.
        OSError: the file cannot be read.
    """
    with np.load(path) as saved:
        return tuple(saved[name] for name in INPUT_NAMES[arch])
