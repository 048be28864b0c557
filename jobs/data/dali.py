"""NVIDIA DALI input: ``fn.readers.file`` sharded by rank, decoding on the CPU or the GPU (nvJPEG).

One pipeline per epoch, with ``files=`` in the epoch's order, ``random_shuffle=False`` and
a pipeline seed derived from (seed, epoch, rank). DALI's random operators draw from
generators that advance with every batch, so ``skip`` still runs the skipped batches and
drops them. A val shard one batch shorter than its neighbour gets a batch of pure padding
from DALI; it is dropped, so ``len()`` and the batches yielded always agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jobs.contract.errors import DataError
from jobs.data.config import ImageDataConfig
from jobs.data.images import Batch, ImageLoader, to_model_layout
from jobs.data.listing import AUGMENT_STREAM, ImageFolder, Split, derive_seed, epoch_order, shard_bounds


def import_dali() -> Any:
    """Import DALI and its PyTorch plugin.

    Raises:
        DataError: DALI is not installed.
    """
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        raise DataError(
            "data.backend=dali needs NVIDIA DALI: pip install nvidia-dali-cuda120, "
            "or use --set data.backend=torch"
        ) from None
    return nvidia.dali


def dali_decoder_device(cfg: ImageDataConfig, device: torch.device) -> str:
    """``mixed`` (nvJPEG on the GPU) or ``cpu``, from ``cfg.dali_device`` and the device.

    Raises:
        DataError: ``dali_device`` is ``gpu`` but the training device is not CUDA.
    """
    if cfg.dali_device == "gpu" and device.type != "cuda":
        raise DataError(f"data.dali_device=gpu needs a CUDA device, the job runs on {device}: "
                        "use --set data.dali_device=cpu")
    wants_gpu = cfg.dali_device == "gpu" or (cfg.dali_device == "auto" and device.type == "cuda")
    return "mixed" if wants_gpu else "cpu"


def dali_pipeline(files: list[str], folder: ImageFolder, cfg: ImageDataConfig, *, train: bool, rank: int,
                  world_size: int, batch_size: int, seed: int, decoder: str, device_id: int | None,
                  layout: str) -> Any:
    """Build one epoch's pipeline: read ``files`` (shard ``rank``), decode, augment, normalise.

    Outputs ``images`` (float, ``layout``) and ``positions`` (each sample's index in
    ``files``; with no ``labels=`` DALI's file reader emits exactly that).
    """
    from nvidia.dali import fn, pipeline_def, types

    size = cfg.image_size

    @pipeline_def(batch_size=batch_size, num_threads=cfg.workers, device_id=device_id, seed=seed)
    def pipeline() -> tuple[Any, Any]:
        jpegs, positions = fn.readers.file(
            file_root=str(folder.root), files=files, shard_id=rank, num_shards=world_size,
            random_shuffle=False, pad_last_batch=not train, name="Reader",
        )
        if train:
            # Fused decode + random crop: only the crop window is decoded (ROI decoding in
            # nvJPEG / libjpeg-turbo). On the dev box's CPU it beat decoders.image +
            # random_resized_crop by ~10 % (docs/BENCHMARKS.md); same area/ratio sampling.
            images = fn.decoders.image_random_crop(
                jpegs, device=decoder, output_type=types.RGB, random_area=list(cfg.crop_scale),
                random_aspect_ratio=list(cfg.crop_ratio), num_attempts=10,
            )
            images = fn.resize(images, resize_x=size, resize_y=size)
            mirror = fn.random.coin_flip(probability=0.5) if cfg.flip else 0
            crop = None
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=cfg.val_resize)
            mirror, crop = 0, (size, size)
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout=layout, crop=crop, mirror=mirror,
            mean=list(cfg.mean), std=list(cfg.std),
        )
        return images, positions

    return pipeline()


class DaliLoader(ImageLoader):
    """NVIDIA DALI: ``fn.readers.file`` sharded by rank, decoding on the CPU or the GPU."""

    def __init__(self, folder: ImageFolder, cfg: ImageDataConfig, split: Split, *, rank: int, world_size: int,
                 batch_size: int, seed: int, device: torch.device, channels_last: bool) -> None:
        import_dali()
        self.folder, self.cfg, self.split = folder, cfg, split
        self.rank, self.world_size, self.batch_size, self.seed = rank, world_size, batch_size, seed
        self.device, self.channels_last = device, channels_last
        self.decoder = dali_decoder_device(cfg, device)
        self.samples = len(folder)
        self.labels = torch.from_numpy(folder.labels)
        # NHWC output becomes channels_last NCHW with a free permute; plain NCHW otherwise.
        self.layout = "HWC" if channels_last else "CHW"

    def __len__(self) -> int:
        order_len = len(epoch_order(self.samples, self.split, self.seed, 0, self.world_size, self.batch_size))
        start, end = shard_bounds(order_len, self.rank, self.world_size)
        return math.ceil((end - start) / self.batch_size)

    def device_id(self) -> int | None:
        """The CUDA device for a ``mixed`` pipeline, None for a CPU-only one."""
        if self.decoder != "mixed":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def iterator(self, order: np.ndarray, epoch: int) -> Any:
        """A DALI iterator over this rank's shard of ``order``, seeded by (seed, epoch, rank)."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        train = self.split == "train"
        pipe = dali_pipeline(
            [self.folder.files[i] for i in order], self.folder, self.cfg, train=train, rank=self.rank,
            world_size=self.world_size, batch_size=self.batch_size,
            seed=derive_seed(self.seed, epoch, self.rank, AUGMENT_STREAM),
            decoder=self.decoder, device_id=self.device_id(), layout=self.layout,
        )
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        return DALIGenericIterator([pipe], ["images", "positions"], reader_name="Reader",
                                   last_batch_policy=policy, auto_reset=False)

    def indexed_epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        order = epoch_order(self.samples, self.split, self.seed, epoch, self.world_size, self.batch_size)
        if skip >= len(self):
            return
        iterator = self.iterator(order, epoch)
        try:
            yield from self.batches(iterator, torch.from_numpy(order), skip)
        finally:
            del iterator  # frees the pipeline's threads and buffers now, not at the next GC

    def batches(self, iterator: Any, order: Tensor, skip: int) -> Iterator[Batch]:
        """Convert DALI's output; run but drop the first ``skip`` batches (RNG alignment)."""
        for step, outputs in enumerate(iterator):
            if step < skip:
                continue
            positions = outputs[0]["positions"].view(-1).long()
            # A shorter val shard is padded up to a batch that PARTIAL strips to nothing.
            if positions.numel() == 0:
                continue
            indices = order[positions]
            images = to_model_layout(outputs[0]["images"], self.device, self.channels_last,
                                     nhwc=self.layout == "HWC")
            yield images, self.labels[indices].to(self.device, non_blocking=True), indices

