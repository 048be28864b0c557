"""Building the image loader a recipe's ``data:`` section asks for (DALI, torch + Pillow, synthetic).

The interface and its guarantees are in :mod:`jobs.data.images`; DALI is imported only
when ``data.backend`` is ``dali``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from jobs.contract.errors import DataError
from jobs.data.config import ImageDataConfig
from jobs.data.images import ImageLoader, SyntheticLoader
from jobs.data.listing import ImageFolder, Split, check_topology, scan_split, train_batches


def build_loader(cfg: ImageDataConfig, split: Split, *, data_dir: Path, rank: int, world_size: int,
                 batch_size: int, seed: int, device: torch.device, channels_last: bool,
                 num_classes: int) -> ImageLoader:
    """Build the loader of ``split`` for one rank with the backend ``cfg.backend`` names.

    Raises:
        DataError: the data set is missing, empty, has more classes than ``num_classes``, is
            too small for one batch per rank, ``val_resize`` is below ``image_size``, or DALI
            is missing for ``backend=dali``.
        ValueError: rank, world size or batch size are impossible.
    """
    check_topology(rank, world_size, batch_size)
    if cfg.backend == "synthetic":
        return SyntheticLoader(cfg, split, rank=rank, world_size=world_size, batch_size=batch_size,
                               seed=seed, device=device, channels_last=channels_last, num_classes=num_classes)
    if cfg.backend == "dali":
        from jobs.data.dali import DaliLoader as loader_class
        from jobs.data.dali import import_dali

        import_dali()  # fail on a missing install before scanning a large folder
    else:
        from jobs.data.pillow import TorchLoader as loader_class
    if cfg.val_resize < cfg.image_size:
        raise DataError(f"data.val_resize ({cfg.val_resize}) is smaller than data.image_size "
                        f"({cfg.image_size}): the centre crop would fall outside the image; raise data.val_resize")
    folder = scan_split(Path(data_dir), split)
    check_folder(folder, split, world_size, batch_size, num_classes)
    return loader_class(folder, cfg, split, rank=rank, world_size=world_size, batch_size=batch_size,
                        seed=seed, device=device, channels_last=channels_last)


def check_folder(folder: ImageFolder, split: Split, world_size: int, batch_size: int,
                 num_classes: int) -> None:
    """Raises DataError when the split cannot feed the model or the ranks."""
    if len(folder.classes) > num_classes:
        raise DataError(f"{folder.root} has {len(folder.classes)} classes but model.num_classes is "
                        f"{num_classes}: use --set model.num_classes={len(folder.classes)}")
    if split == "train" and train_batches(len(folder), world_size, batch_size) == 0:
        raise DataError(f"{folder.root} has {len(folder)} images, fewer than world size {world_size} "
                        f"x batch size {batch_size}: lower train.batch_size or use more images")
