"""Listing and sharding an ImageNet-layout folder: which files each rank reads, in which order.

Shared by the DALI and the torch loaders (:mod:`jobs.data.images` explains the guarantees).
The split's files are listed once, sorted; classes are the sorted folder names of
``train/`` (for ``val`` too). A training epoch's order is one seeded permutation, the same
on every rank, cut so that every rank gets the same number of full batches; rank ``r``
reads the contiguous shard ``r``, exactly what DALI's ``shard_id=r, num_shards=world_size``
selects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from jobs.contract.errors import DataError

Split = Literal["train", "val"]
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class ImageFolder:
    """One split of an ImageNet-layout folder: ``root/<class>/<image>``."""

    root: Path
    files: list[str]  # relative to root, sorted by class then name
    labels: np.ndarray  # int64 class index of each file
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)


def missing_data_message(root: Path, data_dir: Path, problem: str) -> str:
    """One line saying what is missing where and how to fix it."""
    return (
        f"{problem} at {root}: create it with 'podrun data digits {data_dir}' "
        f"or point data.dataset / the profile's data_root at it"
    )


def class_folders(root: Path) -> list[str]:
    """Sorted names of the sub-folders of ``root``."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def scan_split(data_dir: Path, split: Split) -> ImageFolder:
    """List the images of ``data_dir/split``; classes are the sorted folder names of train.

    Raises:
        DataError: the split folder is missing, holds no images in class folders, or (val)
            has a class folder that train lacks.
    """
    root = Path(data_dir) / split
    if not root.is_dir():
        raise DataError(missing_data_message(root, Path(data_dir), "data set not found"))
    present = class_folders(root)
    train_root = Path(data_dir) / "train"
    classes = class_folders(train_root) if split == "val" and train_root.is_dir() else present
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise DataError(f"{root} has class folders that {train_root} lacks ({', '.join(unknown[:3])}"
                        f"{' ...' if len(unknown) > 3 else ''}): both splits need the same classes")
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        if not (root / name).is_dir():
            continue
        images = sorted(
            entry.name
            for entry in os.scandir(root / name)
            if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES)
        )
        files.extend(f"{name}/{image}" for image in images)
        labels.extend([label] * len(images))
    if not files:
        problem = "no images (*.JPEG, *.jpg, *.jpeg, *.png in class folders)"
        raise DataError(missing_data_message(root, Path(data_dir), problem))
    return ImageFolder(root, files, np.asarray(labels, dtype=np.int64), classes)


# --------------------------------------------------------------------------- sharding


def derive_seed(*parts: int) -> int:
    """A 31-bit seed mixed from integers (DALI wants a non-negative int32)."""
    words = [part % (1 << 64) for part in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


PERMUTATION_STREAM = 1  # keeps the permutation's seed apart from the augmentation seeds
AUGMENT_STREAM = 2


def train_batches(samples: int, world_size: int, batch_size: int) -> int:
    """Full batches per rank per epoch; the incomplete tail is dropped on every rank."""
    return (samples // world_size) // batch_size


def epoch_order(samples: int, split: Split, seed: int, epoch: int, world_size: int,
                batch_size: int) -> np.ndarray:
    """The global sample order of one epoch, before sharding (identical on every rank)."""
    if split == "val":
        return np.arange(samples, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, epoch, PERMUTATION_STREAM))
    keep = world_size * train_batches(samples, world_size, batch_size) * batch_size
    return rng.permutation(samples).astype(np.int64)[:keep]


def shard_bounds(samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """Start and end of shard ``rank``: the same formula as DALI's readers."""
    return samples * rank // world_size, samples * (rank + 1) // world_size


def check_topology(rank: int, world_size: int, batch_size: int) -> None:
    """Raises ValueError for an impossible rank, world size or batch size."""
    if world_size < 1 or not 0 <= rank < world_size or batch_size < 1:
        raise ValueError(f"invalid rank={rank}, world_size={world_size}, batch_size={batch_size}")

