"""Input pipeline throughput: DALI (CPU, and mixed on a GPU) against DataLoader + Pillow.

Both sides are the project's own loaders (:func:`jobs.data.build_loader`) on the same
JPEGs, with the same train augmentation (random resized crop, flip, normalise), the same
batch size and the same parallelism (DALI threads = DataLoader workers), measured after a
warm-up in the same run; rounds alternate between the pipelines and medians are reported::

    python bench/input_pipeline.py --data data/imagenet --threads 2 --batch 64 --batches 30

Without ``--data`` it first writes ImageNet-sized (500x375) photo-like JPEGs into a
temporary folder with :func:`orchestrator.datasets.images.write_synthetic`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.data.config import ImageDataConfig  # noqa: E402
from jobs.data.image_loader import build_loader
from jobs.data.images import ImageLoader  # noqa: E402
from orchestrator.datasets.images import write_synthetic  # noqa: E402
from orchestrator.errors import PodrunError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path,
                        help="ImageNet-layout folder (with train/); default: generate one")
    parser.add_argument("--threads", type=int, default=2, help="DALI threads = DataLoader workers")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per pipeline")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--classes", type=int, default=10, help="classes of a generated data set")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def endless_batches(loader: ImageLoader) -> Iterator[torch.Tensor]:
    """Images of epoch 0, 1, 2 ... so a small data set can still feed every timed batch."""
    epoch = 0
    while True:
        for images, _ in loader.epoch(epoch):
            yield images
        epoch += 1


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: ImageDataConfig, data: Path, args: argparse.Namespace, device: torch.device,
            classes: int) -> float:
    """Images per second of the train pipeline over ``args.batches`` batches after warm-up."""
    loader = build_loader(cfg, "train", data_dir=data, rank=0, world_size=1, batch_size=args.batch, seed=0,
                          device=device, channels_last=True, num_classes=max(classes, 2))
    batches = endless_batches(loader)
    try:
        for _ in range(args.warmup):
            next(batches)
        synchronise(device)
        start = time.perf_counter()
        images = 0
        for _ in range(args.batches):
            images += len(next(batches))
        synchronise(device)
        return images / (time.perf_counter() - start)
    finally:
        batches.close()
        loader.close()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare_data(args: argparse.Namespace, scratch: Path) -> Path:
    """The folder to read: ``--data``, or enough generated JPEGs for one epoch of the run."""
    if args.data is not None:
        return args.data
    images = args.batch * (args.warmup + args.batches + 1)
    print(f"writing {images} synthetic 500x375 JPEGs to {scratch} ...", flush=True)
    write_synthetic(scratch, train_images=images, val_images=args.classes, classes=args.classes,
                    progress=True)
    return scratch


def pipelines(args: argparse.Namespace) -> dict[str, tuple[ImageDataConfig, torch.device]]:
    """The pipelines to compare on this machine, by result key."""
    common = dict(image_size=args.image_size, workers=args.threads)
    cpu = torch.device("cpu")
    found = {
        "pillow_img_s": (ImageDataConfig(backend="torch", **common), cpu),
        "dali_cpu_img_s": (ImageDataConfig(backend="dali", dali_device="cpu", **common), cpu),
    }
    if torch.cuda.is_available():
        gpu = ImageDataConfig(backend="dali", dali_device="gpu", **common)
        found["dali_mixed_img_s"] = (gpu, torch.device("cuda", 0))
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every pipeline ``args.repeats`` times, interleaved, and keep the medians.

    Interleaving rounds (Pillow, DALI, Pillow, DALI ...) spreads any load that other
    processes put on the machine over both sides instead of penalising one.
    """
    rounds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="podrun-bench-") as scratch:
        data = prepare_data(args, Path(scratch))
        classes = sum(1 for entry in (data / "train").iterdir() if entry.is_dir())
        for _ in range(args.repeats):
            for key, (cfg, device) in pipelines(args).items():
                rounds.setdefault(key, []).append(measure(cfg, data, args, device, classes))
    results: dict[str, Any] = {key: statistics.median(values) for key, values in rounds.items()}
    results["rounds"] = rounds
    results["dali_cpu_over_pillow"] = results["dali_cpu_img_s"] / results["pillow_img_s"]
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name(0)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"load average before the run (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"settings: threads/workers={args.threads} batch={args.batch} warm-up={args.warmup} "
          f"timed batches={args.batches} image size={args.image_size}")
    try:
        results = run(args)
    except PodrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, values in results["rounds"].items():
        print(f"rounds {key}: " + ", ".join(f"{value:.1f}" for value in values))
    print(f"load average after the run (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"DataLoader + Pillow (train): {results['pillow_img_s']:8.1f} img/s")
    print(f"DALI cpu (train):            {results['dali_cpu_img_s']:8.1f} img/s")
    if "dali_mixed_img_s" in results:
        print(f"DALI mixed (train, {results['gpu']}): {results['dali_mixed_img_s']:8.1f} img/s")
    print(f"ratio DALI cpu / Pillow:     {results['dali_cpu_over_pillow']:8.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
