"""Image input pipelines for the ResNet-50 recipe: DALI, torch DataLoader + Pillow, synthetic.

The training loop calls :func:`build_loader` once per split and then ``loader.epoch(e)``::

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
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from orchestrator.config import DataConfig
from orchestrator.errors import DataError

Split = Literal["train", "val"]
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
Batch = tuple[Tensor, Tensor, Tensor]  # images, labels, sample indices (CPU int64)


# --------------------------------------------------------------------------- listing


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


# --------------------------------------------------------------------------- loaders


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

    def __init__(self, cfg: DataConfig, split: Split, *, rank: int, world_size: int, batch_size: int,
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


# --------------------------------------------------------------------------- torch + Pillow


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


def train_transform(image: Image.Image, cfg: DataConfig, rng: np.random.Generator) -> Image.Image:
    """Random resized crop to ``cfg.image_size`` and an optional random horizontal flip."""
    left, top, w, h = random_resized_crop_box(image.width, image.height, cfg.crop_scale, cfg.crop_ratio, rng)
    size = cfg.image_size
    image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if cfg.flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def val_transform(image: Image.Image, cfg: DataConfig) -> Image.Image:
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

    def __init__(self, folder: ImageFolder, indices: np.ndarray, cfg: DataConfig, train: bool,
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

    def __init__(self, folder: ImageFolder, cfg: DataConfig, split: Split, *, rank: int, world_size: int,
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


# --------------------------------------------------------------------------- DALI


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


def dali_decoder_device(cfg: DataConfig, device: torch.device) -> str:
    """``mixed`` (nvJPEG on the GPU) or ``cpu``, from ``cfg.dali_device`` and the device.

    Raises:
        DataError: ``dali_device`` is ``gpu`` but the training device is not CUDA.
    """
    if cfg.dali_device == "gpu" and device.type != "cuda":
        raise DataError(f"data.dali_device=gpu needs a CUDA device, the job runs on {device}: "
                        "use --set data.dali_device=cpu")
    wants_gpu = cfg.dali_device == "gpu" or (cfg.dali_device == "auto" and device.type == "cuda")
    return "mixed" if wants_gpu else "cpu"


def dali_pipeline(files: list[str], folder: ImageFolder, cfg: DataConfig, *, train: bool, rank: int,
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

    def __init__(self, folder: ImageFolder, cfg: DataConfig, split: Split, *, rank: int, world_size: int,
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


# --------------------------------------------------------------------------- entry point


def build_loader(cfg: DataConfig, split: Split, *, data_dir: Path, rank: int, world_size: int,
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
        import_dali()  # fail on a missing install before scanning a large folder
    if cfg.val_resize < cfg.image_size:
        raise DataError(f"data.val_resize ({cfg.val_resize}) is smaller than data.image_size "
                        f"({cfg.image_size}): the centre crop would fall outside the image; raise data.val_resize")
    folder = scan_split(Path(data_dir), split)
    check_folder(folder, split, world_size, batch_size, num_classes)
    loader_class = DaliLoader if cfg.backend == "dali" else TorchLoader
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
