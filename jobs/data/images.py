"""Image input for the ResNet-50 recipe: the loader interface, synthetic data, and the entry point.

The training loop calls :func:`jobs.data.image_loader.build_loader` once per split and then ``loader.epoch(e)``::

    loader = build_loader(cfg.data, "train", data_dir=Path("data/digits"), rank=0, world_size=1,
                          batch_size=256, seed=1, device=torch.device("cuda"),
                          channels_last=True, num_classes=1000)
    for images, labels in loader.epoch(epoch, skip=steps_done_in_epoch):
        ...

Sharding and determinism (the same for the DALI and the torch backend):

* The split's files are listed once, sorted. Classes are the sorted folder names of
  ``train/`` (for ``val`` too, so a val split missing a class keeps the same labels).
* ``train``: every epoch the list is permuted by a numpy RNG seeded from (seed, epoch) -
  the same permutation on every rank - and cut to ``world_size * batches * batch_size``
  samples, so every rank gets exactly ``batches`` full batches (DDP needs equal step
  counts). Rank ``r`` reads the contiguous shard ``r`` of that list, which is exactly what
  DALI's ``shard_id=r, num_shards=world_size`` selects.
* ``val``: the sorted list, sharded the same way; DALI pads the shard
  (``pad_last_batch=True``) and the iterator strips the padding (``LastBatchPolicy.PARTIAL``),
  so each sample is seen exactly once; ranks may differ by one batch.
* DALI: one pipeline per epoch, with ``files=`` in the epoch's order, ``random_shuffle=False``
  and a pipeline seed derived from (seed, epoch, rank). DALI's random operators draw from
  generators that advance with every batch, so a batch's augmentation depends on how many
  batches ran before it: ``skip`` therefore still runs the skipped batches and drops them.
  A val shard one batch shorter than its neighbour gets a batch of pure padding from
  DALI; it is dropped, so ``len()`` and the batches yielded always agree.
* torch: each sample's crop and flip come from a generator seeded by
  (seed, epoch, sample index), independent of workers and batches, so ``skip`` just starts
  later in the list without decoding the skipped images.

The reader's label output is the sample's position in the epoch's file list, mapped back
to the class label here; :meth:`ImageLoader.indexed_epoch` also yields those sample
indices, which the tests use to check sharding against what the pipeline really read.

The backends live in :mod:`jobs.data.dali` (DALI) and :mod:`jobs.data.pillow` (torch
DataLoader + Pillow); listing and sharding in :mod:`jobs.data.listing`. DALI is imported
only when ``data.backend`` is ``dali``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor

from jobs.contract.errors import DataError
from jobs.data.config import ImageDataConfig
from jobs.data.listing import AUGMENT_STREAM, Split, derive_seed

Batch = tuple[Tensor, Tensor, Tensor]  # images, labels, sample indices (CPU int64)


def to_model_layout(images: Tensor, device: torch.device, channels_last: bool, nhwc: bool) -> Tensor:
    """Move a batch to ``device`` as logical NCHW, channels_last-strided when asked.

    An NHWC batch permuted to NCHW already has channels_last strides, so no copy is made
    for channels_last; only plain NCHW needs ``contiguous()``.
    """
    images = images.to(device, non_blocking=True)
    if nhwc:
        images = images.permute(0, 3, 1, 2)
        return images if channels_last else images.contiguous()
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


class ImageLoader(ABC):
    """Batches of one split for one rank; see the module docstring for the guarantees."""

    samples: int

    @abstractmethod
    def __len__(self) -> int:
        """Batches per epoch on this rank."""

    @abstractmethod
    def indexed_epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Like :meth:`epoch`, plus the global index of each sample (a CPU int64 tensor)."""

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(images, labels)`` of ``epoch``, leaving out the first ``skip`` batches.

        Images are float32 ``[N, 3, H, W]``, normalised, on the loader's device; labels are
        int64 ``[N]``. The same (seed, epoch, rank, world_size) always gives the same batches.
        """
        for images, labels, _ in self.indexed_epoch(epoch, skip):
            yield images, labels

    def close(self) -> None:
        """Release workers and pipelines; the loader must not be used afterwards."""


class SyntheticLoader(ImageLoader):
    """One seeded random batch, made once on the device and yielded every step (no disk)."""

    def __init__(self, cfg: ImageDataConfig, split: Split, *, rank: int, world_size: int, batch_size: int,
                 seed: int, device: torch.device, channels_last: bool, num_classes: int) -> None:
        self.samples = cfg.synthetic_samples
        self.per_rank = cfg.synthetic_samples // world_size
        self.offset = rank * self.per_rank
        self.batch_size = batch_size
        self.train = split == "train"
        if self.train and self.per_rank < batch_size:
            raise DataError(
                f"data.synthetic_samples={cfg.synthetic_samples} gives {self.per_rank} per rank, "
                f"fewer than one batch of {batch_size}: raise data.synthetic_samples"
            )
        generator = torch.Generator().manual_seed(derive_seed(seed, rank, AUGMENT_STREAM))
        size = cfg.image_size
        images = torch.randn(batch_size, size, size, 3, generator=generator)
        self.images = to_model_layout(images, device, channels_last, nhwc=True)
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)

    def __len__(self) -> int:
        if self.train:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def indexed_epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        for step in range(skip, len(self)):
            count = min(self.batch_size, self.per_rank - step * self.batch_size)
            start = self.offset + step * self.batch_size
            yield self.images[:count], self.labels[:count], torch.arange(start, start + count)
