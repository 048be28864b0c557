"""Writers for image data sets on disk, in the ImageNet folder layout the loaders read.

Both writers produce ``out/train/<class>/*.JPEG`` and ``out/val/<class>/*.JPEG``:

* :func:`write_digits` writes scikit-learn's bundled digits (1,797 real 8x8 images,
  10 classes, no download) upscaled to small RGB JPEGs: a real, learnable data set that a
  CPU trains on in minutes.
* :func:`write_synthetic` writes ImageNet-sized JPEGs whose content compresses like a
  photograph, for input pipeline benchmarks on machines without ImageNet.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from orchestrator.errors import DataError

SPLITS = ("train", "val")
JPEG_QUALITY = 95


def class_folder(index: int) -> str:
    """The folder name of class ``index``; zero-padded so that sorted order is numeric."""
    return f"n{index:08d}"


def prepare_output(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready to receive ``train/`` and ``val/``.

    Raises:
        DataError: ``out`` is a file, or a non-empty folder and ``overwrite`` is false.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; choose a folder for the data set")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"{out} is not empty; pass overwrite=True (--overwrite) or choose an empty folder"
            )
        # Only the splits this module writes are removed: anything else is the user's.
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def save_jpeg(pixels: np.ndarray, path: Path) -> None:
    """Save an ``[H, W, 3]`` uint8 array as a JPEG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path, format="JPEG", quality=JPEG_QUALITY)


# --------------------------------------------------------------------------- digits


def digit_to_rgb(image: np.ndarray, image_size: int) -> np.ndarray:
    """Turn one 8x8 digit (values 0..16) into an ``[image_size, image_size, 3]`` uint8 array."""
    grey = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = Image.fromarray(grey, mode="L").resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(big.convert("RGB"))


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train and a val split that keep each class's share.

    Raises:
        DataError: ``val_fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, val = train_test_split(
        indices, test_size=val_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(val)


def write_digits(
    out: Path,
    *,
    image_size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write scikit-learn's digits as RGB JPEGs in ImageNet layout under ``out``.

    Returns a summary: ``path``, ``classes``, ``train`` and ``val`` image counts and the
    per-split, per-class counts under ``per_class``.

    Raises:
        DataError: ``out`` is not empty (and ``overwrite`` is false) or the split is invalid.
    """
    from sklearn.datasets import load_digits

    out = Path(out)
    digits = load_digits()
    labels = np.asarray(digits.target)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    prepare_output(out, overwrite)
    per_class: dict[str, dict[str, int]] = {}
    for split, indices in (("train", train_idx), ("val", val_idx)):
        for index in indices:
            label = int(labels[index])
            name = f"digit_{index:05d}.JPEG"
            path = out / split / class_folder(label) / name
            save_jpeg(digit_to_rgb(digits.images[index], image_size), path)
        per_class[split] = {class_folder(c): int((labels[indices] == c).sum()) for c in range(10)}
    return {
        "path": str(out),
        "classes": 10,
        "train": int(len(train_idx)),
        "val": int(len(val_idx)),
        "image_size": image_size,
        "per_class": per_class,
    }


# --------------------------------------------------------------------------- synthetic


def smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """A ``[height, width, 3]`` float field: random values on a coarse grid, upsampled smoothly."""
    grid = rng.uniform(0, 255, size=(max(2, cells * height // width), cells, 3)).astype(np.uint8)
    smooth = Image.fromarray(grid, mode="RGB").resize((width, height), Image.BICUBIC)
    return np.asarray(smooth, dtype=np.float32)


def photo_like(rng: np.random.Generator, width: int, height: int, tint: np.ndarray) -> np.ndarray:
    """A random image that JPEG-compresses roughly like a photograph.

    White noise compresses far worse (and decodes slower) than real photos, a flat image far
    better, so the image mixes a few octaves of smooth noise, a gradient and mild grain.
    """
    image = 0.45 * smooth_noise(rng, width, height, 4)
    image += 0.30 * smooth_noise(rng, width, height, 16)
    image += 0.15 * smooth_noise(rng, width, height, 64)
    ramp = np.linspace(-40, 40, width, dtype=np.float32)[None, :, None]
    image += ramp * rng.uniform(-1, 1) + tint
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    """Yield a function that advances a rich progress bar (a no-op when disabled)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def write_synthetic(
    out: Path,
    *,
    train_images: int,
    val_images: int,
    classes: int,
    width: int = 500,
    height: int = 375,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ImageNet-sized, photo-like random JPEGs in ImageNet layout under ``out``.

    Images are spread round-robin over ``classes`` folders; each class has its own colour
    tint so a model can learn something. Returns a summary like :func:`write_digits`, plus
    ``bytes`` (total JPEG size).

    Raises:
        DataError: ``out`` is not empty (and ``overwrite`` is false) or a count is invalid.
    """
    if classes < 1 or train_images < classes or val_images < 0:
        raise DataError(
            f"need classes >= 1, train_images >= classes and val_images >= 0 "
            f"(got classes={classes}, train_images={train_images}, val_images={val_images})"
        )
    out = Path(out)
    prepare_output(out, overwrite)
    rng = np.random.default_rng(seed)
    tints = rng.uniform(-50, 50, size=(classes, 3)).astype(np.float32)
    show = progress and sys.stdout.isatty()
    total_bytes = 0
    with progress_bar(train_images + val_images, f"writing JPEGs to {out}", show) as advance:
        for split, count in (("train", train_images), ("val", val_images)):
            for index in range(count):
                label = index % classes
                path = out / split / class_folder(label) / f"synthetic_{index:08d}.JPEG"
                save_jpeg(photo_like(rng, width, height, tints[label]), path)
                total_bytes += path.stat().st_size
                advance()
    return {
        "path": str(out),
        "classes": classes,
        "train": train_images,
        "val": val_images,
        "width": width,
        "height": height,
        "bytes": total_bytes,
    }
