"""Input pipelines and data set writers, against real DALI, real DataLoader workers and JPEGs.

The sharding tests use a small "identity" data set: every image sits in its own class
folder, so the class label the pipeline returns names the image it read. That checks the
loaders' sample indices (from DALI's reader output) against something independent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.data.config import ImageDataConfig
from jobs.data.image_loader import build_loader
from jobs.data.images import ImageLoader
from orchestrator.datasets.images import write_digits, write_synthetic
from orchestrator.errors import DataError

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

REPO = Path(__file__).resolve().parent.parent
TRAIN_IMAGES, VAL_IMAGES, BATCH = 37, 9, 4
BACKENDS = ["dali", "torch"]


def write_identity_split(root: Path, count: int, seed: int) -> None:
    """``count`` small images, one per class folder; a few PNGs and a stray text file."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = root / f"c{index:03d}"
        folder.mkdir(parents=True)
        # Smooth content: white noise would mostly measure the decoders' chroma upsampling.
        grid = Image.fromarray(rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8))
        image = grid.resize((int(rng.integers(20, 40)), int(rng.integers(20, 40))), Image.BICUBIC)
        suffix = ".png" if index % 5 == 0 else ".JPEG"
        image.save(folder / f"img{index}{suffix}")
    (root / "c000" / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("identity")
    write_identity_split(root / "train", TRAIN_IMAGES, seed=0)
    write_identity_split(root / "val", VAL_IMAGES, seed=1)
    return root


def make_loader(data_dir: Path, backend: str, split: str = "train", *, rank: int = 0, world_size: int = 1,
                seed: int = 7, channels_last: bool = True, **cfg: object) -> ImageLoader:
    config = ImageDataConfig(backend=backend, image_size=16, val_resize=20, workers=2, **cfg)
    return build_loader(config, split, data_dir=data_dir, rank=rank, world_size=world_size, batch_size=BATCH,
                        seed=seed, device=torch.device("cpu"), channels_last=channels_last, num_classes=64)


def collect(loader: ImageLoader, epoch: int, skip: int = 0) -> list[tuple[torch.Tensor, ...]]:
    try:
        return list(loader.indexed_epoch(epoch, skip))
    finally:
        loader.close()


def indices_of(batches: list) -> list[int]:
    return [int(i) for _, _, index in batches for i in index]


# --------------------------------------------------------------------------- writers


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("digits")
    return out, write_digits(out, image_size=16)


def test_write_digits_layout_and_counts(digits: tuple[Path, dict]) -> None:
    out, summary = digits
    counts = {split: {c.name: len(list(c.glob("*.JPEG"))) for c in (out / split).iterdir()}
              for split in ("train", "val")}
    assert summary["train"] + summary["val"] == 1797
    assert sum(counts["train"].values()) == summary["train"] and sum(counts["val"].values()) == summary["val"]
    assert sorted(counts["train"]) == sorted(counts["val"]) and len(counts["train"]) == 10
    for name, val in counts["val"].items():  # stratified: every class keeps its 20 % share
        assert abs(val - 0.2 * (val + counts["train"][name])) <= 1
    sample = next((out / "val").glob("*/*.JPEG"))
    with Image.open(sample) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (16, 16)


def test_write_digits_refuses_a_non_empty_folder(digits: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = digits
    with pytest.raises(DataError, match=str(out)):
        write_digits(out)
    (tmp_path / "keep.txt").write_text("mine")
    summary = write_digits(tmp_path, image_size=8, overwrite=True)
    assert (tmp_path / "keep.txt").exists() and summary["val"] == len(list(tmp_path.glob("val/*/*.JPEG")))


def test_write_synthetic_layout(tmp_path: Path) -> None:
    summary = write_synthetic(tmp_path, train_images=6, val_images=3, classes=3, width=64, height=48,
                              progress=False)
    assert len(list(tmp_path.glob("train/*/*.JPEG"))) == 6 and len(list(tmp_path.glob("val/*/*.JPEG"))) == 3
    assert len(list((tmp_path / "train").iterdir())) == 3 and summary["bytes"] > 0
    with Image.open(next(tmp_path.glob("train/*/*.JPEG"))) as image:
        assert image.size == (64, 48) and image.mode == "RGB"


def test_digits_load_through_dali(digits: tuple[Path, dict]) -> None:
    out, summary = digits
    loader = make_loader(out, "dali", "val")
    batches = collect(loader, 0)
    assert loader.samples == summary["val"] and len(indices_of(batches)) == summary["val"]
    assert set(int(label) for _, labels, _ in batches for label in labels) == set(range(10))


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_shards_cover_every_sample_once(identity_dir: Path, backend: str) -> None:
    loaders = [make_loader(identity_dir, backend, rank=rank, world_size=2) for rank in (0, 1)]
    assert len(loaders[0]) == len(loaders[1]) == (TRAIN_IMAGES // 2) // BATCH
    shards = [collect(loader, epoch=3) for loader in loaders]
    seen = [indices_of(batches) for batches in shards]
    assert [len(batches) for batches in shards] == [len(loaders[0])] * 2
    assert all(len(images) == BATCH for batches in shards for images, _, _ in batches)
    everything = seen[0] + seen[1]
    assert len(set(everything)) == len(everything) == 2 * len(loaders[0]) * BATCH  # only the tail is dropped
    assert set(everything) <= set(range(TRAIN_IMAGES))
    labels = [int(label) for batches in shards for _, batch_labels, _ in batches for label in batch_labels]
    assert labels == everything  # identity data set: the class the pipeline read is the sample


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_sees_every_sample_exactly_once(identity_dir: Path, backend: str) -> None:
    loaders = [make_loader(identity_dir, backend, "val", rank=rank, world_size=2) for rank in (0, 1)]
    shards = [collect(loader, epoch=0) for loader in loaders]
    labels = sorted(int(label) for batches in shards for _, batch_labels, _ in batches
                    for label in batch_labels)
    assert labels == list(range(VAL_IMAGES))  # no padding duplicates, nothing missing
    assert [len(batches) for batches in shards] == [len(loader) for loader in loaders] == [1, 2]
    assert all(loader.samples == VAL_IMAGES for loader in loaders)


# --------------------------------------------------------------------------- determinism


def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (images_a, labels_a, index_a), (images_b, labels_b, index_b) in zip(first, second):
        assert torch.equal(index_a, index_b) and torch.equal(labels_a, labels_b)
        assert torch.equal(images_a, images_b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_epochs_are_deterministic_and_resumable(identity_dir: Path, backend: str) -> None:
    full = collect(make_loader(identity_dir, backend, rank=1, world_size=2), epoch=2)
    assert_same_batches(full, collect(make_loader(identity_dir, backend, rank=1, world_size=2), epoch=2))
    resumed = collect(make_loader(identity_dir, backend, rank=1, world_size=2), epoch=2, skip=3)
    assert_same_batches(full[3:], resumed)
    assert collect(make_loader(identity_dir, backend, rank=1, world_size=2), 2, skip=99) == []
    other = collect(make_loader(identity_dir, backend, rank=1, world_size=2), epoch=5)
    assert indices_of(other) != indices_of(full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_augmentation_depends_on_seed(identity_dir: Path, backend: str) -> None:
    first = collect(make_loader(identity_dir, backend, "val", seed=1), epoch=0)
    assert_same_batches(first, collect(make_loader(identity_dir, backend, "val", seed=2), epoch=0))
    train_a = collect(make_loader(identity_dir, backend, seed=1), epoch=0)
    train_b = collect(make_loader(identity_dir, backend, seed=2), epoch=0)
    assert indices_of(train_a) != indices_of(train_b)


FRESH_PROCESS = """
import sys, hashlib, torch
from pathlib import Path
sys.path.insert(0, {repo!r})
from jobs.data.image_loader import build_loader
from jobs.data.config import ImageDataConfig

cfg = ImageDataConfig(backend={backend!r}, image_size=16, val_resize=20, workers=2)
loader = build_loader(cfg, "train", data_dir=Path({data!r}), rank=0, world_size=2, batch_size=4, seed=7,
                      device=torch.device("cpu"), channels_last=True, num_classes=64)
digest = hashlib.sha256()
for images, labels in loader.epoch(4):
    digest.update(images.contiguous().numpy().tobytes()); digest.update(labels.numpy().tobytes())
print(digest.hexdigest())
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_batches_in_a_fresh_process(identity_dir: Path, backend: str) -> None:
    script = FRESH_PROCESS.format(repo=str(REPO), backend=backend, data=str(identity_dir))
    run = [sys.executable, "-c", script]
    digests = {subprocess.run(run, capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(digests) == 1 and len(next(iter(digests)).strip()) == 64


# --------------------------------------------------------------------------- layouts


def test_backends_agree_on_order_shape_dtype_and_layout(identity_dir: Path) -> None:
    for split in ("train", "val"):
        dali, torch_ = (collect(make_loader(identity_dir, backend, split, rank=1, world_size=2), epoch=1)
                        for backend in BACKENDS)
        assert indices_of(dali) == indices_of(torch_)  # one sharding plan for both backends
        for (images_d, labels_d, _), (images_t, labels_t, _) in zip(dali, torch_):
            assert images_d.shape == images_t.shape and images_d.shape[1:] == (3, 16, 16)
            assert images_d.dtype == images_t.dtype == torch.float32
            assert labels_d.dtype == labels_t.dtype == torch.int64
            assert images_d.is_contiguous(memory_format=torch.channels_last)
            assert images_t.is_contiguous(memory_format=torch.channels_last)
        if split == "val":  # no randomness: the two decoders/resizers land close to each other
            diff = (torch.cat([b[0] for b in dali]) - torch.cat([b[0] for b in torch_])).abs().mean()
            assert diff < 0.05


@pytest.mark.parametrize("backend", BACKENDS + ["synthetic"])
def test_plain_nchw_when_channels_last_is_off(identity_dir: Path, backend: str) -> None:
    loader = make_loader(identity_dir, backend, channels_last=False, synthetic_samples=40)
    images, labels = next(iter(loader.epoch(0)))
    loader.close()
    assert images.shape == (BATCH, 3, 16, 16) and images.is_contiguous() and labels.dtype == torch.int64


def test_synthetic_shards_and_repeats(tmp_path: Path) -> None:
    loaders = [make_loader(tmp_path / "absent", "synthetic", rank=rank, world_size=2, synthetic_samples=30)
               for rank in (0, 1)]
    assert [len(loader) for loader in loaders] == [3, 3] and loaders[0].samples == 30
    val = make_loader(tmp_path / "absent", "synthetic", "val", world_size=2, synthetic_samples=30)
    assert len(val) == 4 and sum(len(labels) for _, labels in val.epoch(0)) == 15
    assert_same_batches(collect(loaders[0], 0), collect(make_loader(
        tmp_path / "absent", "synthetic", world_size=2, synthetic_samples=30), 1))
    images, labels = next(iter(loaders[1].epoch(0)))
    assert images.is_contiguous(memory_format=torch.channels_last) and int(labels.max()) < 64


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_data_set_names_the_path(tmp_path: Path, backend: str) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'train'}.*podrun data digits"):
        make_loader(tmp_path, backend)
    (tmp_path / "val" / "n0").mkdir(parents=True)
    with pytest.raises(DataError, match=f"no images.*{tmp_path / 'val'}"):
        make_loader(tmp_path, backend, "val")


def test_missing_dali_suggests_the_fix(identity_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes the import fail like a missing install
    with pytest.raises(DataError, match="pip install nvidia-dali-cuda120.*data.backend=torch"):
        make_loader(identity_dir, "dali")


def test_too_few_images_for_one_batch_per_rank(identity_dir: Path) -> None:
    with pytest.raises(DataError, match="fewer than world size 16"):
        make_loader(identity_dir, "torch", world_size=16)


def test_val_labels_follow_the_train_classes(tmp_path: Path) -> None:
    for split, classes in (("train", ["a", "b", "c"]), ("val", ["c"])):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (24, 24), (200, 10, 10)).save(tmp_path / split / name / "x.JPEG")
    _, labels = next(iter(make_loader(tmp_path, "torch", "val").epoch(0)))
    assert labels.tolist() == [2]  # "c" is class 2 of train, not class 0 of val
    (tmp_path / "val" / "zz").mkdir()
    with pytest.raises(DataError, match="zz"):
        make_loader(tmp_path, "dali", "val")
