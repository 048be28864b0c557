"""A rank's random number streams (torch, CUDA, numpy, python): seeded, saved in checkpoints, restored.

The saved form holds only tensors, numbers and lists, so a checkpoint loads with
``torch.load(weights_only=True)``: nothing in it is unpickled as an arbitrary object.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """This rank's RNG streams as tensors, numbers and lists: a checkpoint loads them with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": [int(version), [int(word) for word in internal], gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(saved: list[dict[str, Any]], rank: int, world_size: int) -> None:
    """Restore this rank's RNG streams (rank 0's if the checkpoint came from another world size).

    Reads both formats: numpy's state as a dict holding a tensor, or (checkpoints of the previous
    format) numpy's own tuple; python's as a list or a tuple.
    """
    state = saved[rank] if len(saved) == world_size else saved[0]
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
