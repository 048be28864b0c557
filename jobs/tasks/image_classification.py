"""The image-classification task (``task: image_classification``): ResNet v1.5 on ImageNet-layout images.

Input: DALI, a torch DataLoader with Pillow, or synthetic batches (``data.backend``, see
:mod:`jobs.data.images`); metric: top-1 accuracy over the whole validation split; MLPerf:
the keys of the ResNet benchmark (:func:`jobs.rank.mlperf_log.log_resnet_hparams`). Try it::

    podrun data digits data/digits
    podrun launch recipes/jobs/resnet50-tiny.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.data.config import ImageDataConfig
from jobs.models.config import ResNetConfig
from jobs.tasks.base import Loader, Task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from jobs.contract.recipe import Recipe
    from jobs.rank.mlperf_log import MlperfLogger


class ImageClassification(Task):
    """ResNet on ImageNet-layout data (see the module docstring)."""

    Model = ResNetConfig
    Data = ImageDataConfig
    metric, metric_label, unit = "top1", "top-1", "img"
    input_names, output_names = ("images",), ("logits",)

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        if recipe.eval.target > 1:
            raise ValueError(f"eval.target {recipe.eval.target}: top-1 accuracy is at most 1")

    @classmethod
    def data_paths(cls, data: ImageDataConfig, root: Path) -> dict[str, list[Path]] | None:
        if data.backend == "synthetic":
            return None
        return {"train": [root / "train"], "val": [root / "val"]}

    @classmethod
    def data_hint(cls, data: ImageDataConfig, root: Path) -> str:
        maker = "podrun data digits" if data.dataset == "digits" else "podrun data synthetic"
        return f"create it with '{maker} {root}'"

    @classmethod
    def model_for(cls, recipe: Recipe) -> nn.Module:
        from jobs.models.resnet import build_resnet

        return build_resnet(recipe.model)

    @classmethod
    def model_from_weights(cls, model_config: dict[str, Any], state_dict: dict[str, Any]) -> nn.Module:
        from jobs.models.resnet import build_resnet

        model = build_resnet(ResNetConfig(**model_config))
        model.load_state_dict(state_dict)
        return model.eval()

    @classmethod
    def model_inputs(cls, batch: Any) -> dict[str, torch.Tensor]:
        return {"images": batch[0]}

    # ------------------------------------------------------------------ the runtime

    def __init__(self, job: Any, device: torch.device, autocast: Any) -> None:
        from torch import nn

        super().__init__(job, device, autocast)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.recipe.train.label_smoothing)

    def build_model(self) -> nn.Module:
        return self.model_for(self.recipe)

    def build_loaders(self, rank: int, world_size: int) -> tuple[Loader, Loader]:
        from jobs.data.image_loader import build_loader

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

    def evaluate(self, model: nn.Module, loader: Loader, epoch: int) -> float:
        import torch

        from jobs.rank.dist import all_reduce_sum

        correct, total = 0.0, 0.0
        with torch.no_grad():
            for images, labels in loader.epoch(epoch):
                with self.autocast():
                    logits = model(images)
                correct += float((logits.argmax(dim=1) == labels).sum())
                total += labels.shape[0]
        correct, total = all_reduce_sum([correct, total], self.device)
        return correct / max(total, 1.0)

    def log_hparams(self, mllog: MlperfLogger, train: Loader, val: Loader) -> None:
        from jobs.rank.mlperf_log import log_resnet_hparams

        log_resnet_hparams(mllog, self.recipe, self.job.derived, train_samples=train.samples,
                           eval_samples=val.samples, steps_per_epoch=len(train))
