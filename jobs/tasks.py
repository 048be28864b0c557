"""Recipe tasks: what differs between recipes (model, data, loss, metric, MLPerf keys).

The training loop in :mod:`jobs.train` is shared by every recipe and every backend; a
task only answers the recipe-specific questions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from jobs.dist import all_reduce_sum
from jobs.job import ResolvedJob
from jobs.mlperf_log import MlperfLogger, log_resnet_hparams


class Loader(Protocol):
    samples: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Any]: ...

    def close(self) -> None: ...


class Task(Protocol):
    metric: str  # the name of the target metric, e.g. "top1"
    unit: str  # what throughput counts, e.g. "img"
    varying_shapes: bool  # batches change shape from step to step (torch.compile(dynamic=True))

    def build_model(self) -> nn.Module: ...

    def build_loaders(self, rank: int, world_size: int) -> tuple[Loader, Loader]: ...

    def train_step_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]: ...

    def evaluate(self, model: nn.Module, loader: Loader, epoch: int) -> float: ...

    def log_hparams(self, mllog: MlperfLogger, train: Loader, val: Loader) -> None: ...


class ImageClassification:
    """ResNet on ImageNet-layout data (DALI, torch DataLoader or synthetic input)."""

    metric = "top1"
    unit = "img"
    varying_shapes = False

    def __init__(self, job: ResolvedJob, device: torch.device, autocast: Any) -> None:
        self.job = job
        self.recipe = job.recipe
        self.device = device
        self.autocast = autocast
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.recipe.train.label_smoothing)

    def build_model(self) -> nn.Module:
        from jobs.models.resnet import build_resnet

        return build_resnet(self.recipe.model)

    def build_loaders(self, rank: int, world_size: int) -> tuple[Loader, Loader]:
        from jobs.data.images import build_loader

        common = dict(
            data_dir=Path(self.job.data_dir),
            rank=rank,
            world_size=world_size,
            seed=self.recipe.train.seed,
            device=self.device,
            channels_last=self.recipe.train.channels_last,
            num_classes=self.recipe.model.num_classes,
        )
        train = build_loader(self.recipe.data, "train", batch_size=self.job.derived.batch_size, **common)
        eval_batch = self.recipe.eval.batch_size or self.job.derived.batch_size
        val = build_loader(self.recipe.data, "val", batch_size=eval_batch, **common)
        return train, val

    def train_step_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        images, labels = batch
        with self.autocast():
            loss = self.criterion(model(images), labels)
        return loss, int(labels.shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Loader, epoch: int) -> float:
        correct, total = 0.0, 0.0
        for images, labels in loader.epoch(epoch):
            with self.autocast():
                logits = model(images)
            correct += float((logits.argmax(dim=1) == labels).sum())
            total += labels.shape[0]
        correct, total = all_reduce_sum([correct, total], self.device)
        return correct / max(total, 1.0)

    def log_hparams(self, mllog: MlperfLogger, train: Loader, val: Loader) -> None:
        log_resnet_hparams(mllog, self.recipe, self.job.derived, train_samples=train.samples,
                           eval_samples=val.samples, steps_per_epoch=len(train))


def build_task(job: ResolvedJob, device: torch.device, autocast: Any) -> Task:
    """The task for the recipe's model architecture (the translation task is imported only when used)."""
    if job.recipe.model.arch == "transformer":
        from jobs.translation import Translation

        return Translation(job, device, autocast)
    return ImageClassification(job, device, autocast)
