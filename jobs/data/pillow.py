"""Images decoded by Pillow in ``torch.utils.data.DataLoader`` workers; normalised on the device.

Each sample's crop and flip come from a generator seeded by (seed, epoch, sample index),
independent of workers and batches, so ``skip`` just starts later in the list without
decoding the skipped images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from jobs.data.config import ImageDataConfig
from jobs.data.images import Batch, ImageLoader, to_model_layout
from jobs.data.listing import AUGMENT_STREAM, ImageFolder, Split, epoch_order, shard_bounds


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A crop window ``(left, top, width, height)`` with random area and aspect ratio.

    The usual Inception-style algorithm: ten tries at a random area fraction and log-uniform
    aspect ratio, then a centre crop with the ratio clamped into range.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(image: Image.Image, cfg: ImageDataConfig, rng: np.random.Generator) -> Image.Image:
    """Random resized crop to ``cfg.image_size`` and an optional random horizontal flip."""
    left, top, w, h = random_resized_crop_box(image.width, image.height, cfg.crop_scale, cfg.crop_ratio, rng)
    size = cfg.image_size
    image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if cfg.flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def val_transform(image: Image.Image, cfg: ImageDataConfig) -> Image.Image:
    """Resize the shorter side to ``cfg.val_resize``, then centre-crop ``cfg.image_size``."""
    scale = cfg.val_resize / min(image.width, image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    image = image.resize((width, height), Image.BILINEAR)
    size = cfg.image_size
    # Halves round up, as DALI's crop_pos=0.5 does, so both backends cut the same window.
    left, top = (width - size + 1) // 2, (height - size + 1) // 2
    return image.crop((left, top, left + size, top + size))


class FolderDataset(torch.utils.data.Dataset):
    """The samples one rank reads in one epoch, in order; items are (HWC uint8, label, index)."""

    def __init__(self, folder: ImageFolder, indices: np.ndarray, cfg: ImageDataConfig, train: bool,
                 seed: int, epoch: int) -> None:
        self.folder, self.indices, self.cfg, self.train = folder, indices, cfg, train
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[np.ndarray, int, int]:
        index = int(self.indices[position])
        with Image.open(self.folder.root / self.folder.files[index]) as raw:
            image = raw.convert("RGB")
        if self.train:
            # Seeded by the sample itself: the result does not depend on workers or batches.
            rng = np.random.default_rng([self.seed % (1 << 64), self.epoch, index, AUGMENT_STREAM])
            image = train_transform(image, self.cfg, rng)
        else:
            image = val_transform(image, self.cfg)
        return np.array(image, dtype=np.uint8), int(self.folder.labels[index]), index


class TorchLoader(ImageLoader):
    """``torch.utils.data.DataLoader`` workers decoding with Pillow; normalised on the device."""

    def __init__(self, folder: ImageFolder, cfg: ImageDataConfig, split: Split, *, rank: int, world_size: int,
                 batch_size: int, seed: int, device: torch.device, channels_last: bool) -> None:
        self.folder, self.cfg, self.split = folder, cfg, split
        self.rank, self.world_size, self.batch_size, self.seed = rank, world_size, batch_size, seed
        self.device, self.channels_last = device, channels_last
        self.samples = len(folder)
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(cfg.std, dtype=torch.float32, device=device)

    def __len__(self) -> int:
        order = epoch_order(self.samples, self.split, self.seed, 0, self.world_size, self.batch_size)
        start, end = shard_bounds(len(order), self.rank, self.world_size)
        return math.ceil((end - start) / self.batch_size)

    def shard(self, epoch: int) -> np.ndarray:
        """Global indices this rank reads in ``epoch``, in order."""
        order = epoch_order(self.samples, self.split, self.seed, epoch, self.world_size, self.batch_size)
        start, end = shard_bounds(len(order), self.rank, self.world_size)
        return order[start:end]

    def indexed_epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        indices = self.shard(epoch)[skip * self.batch_size:]
        if len(indices) == 0:
            return
        dataset = FolderDataset(self.folder, indices, self.cfg, self.split == "train", self.seed, epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels, index in loader:
            yield self.normalise(images), labels.to(self.device, non_blocking=True), index

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 NHWC on the host to normalised float NCHW on the device."""
        images = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        return to_model_layout(images, self.device, self.channels_last, nhwc=True)

