"""A recipe that is not podrun's own: a small MLP on scikit-learn's digits, its task and schemas here.

It shows that a recipe is a YAML file and a task file, with no edit to podrun:
``tests/recipes/mlp.yaml`` names this class (``task: tests.recipes.mlp:MlpTask``), whose
``Model`` and ``Data`` are the schemas of its ``model:`` and ``data:`` sections, and every
rank imports it from there (the ranks start in the checkout). The data is the 8x8 digits
bundled with scikit-learn, held in memory (no files: :meth:`MlpTask.data_paths` is None).

    podrun launch tests/recipes/jobs/mlp-digits.yaml
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from jobs.contract.config_io import StrictModel
from jobs.tasks.base import Task

if TYPE_CHECKING:
    import torch
    from torch import nn


class MlpConfig(StrictModel):
    hidden: int = Field(64, gt=0, description="units per hidden layer")
    layers: int = Field(1, ge=1, description="hidden layers")


class DigitsData(StrictModel):
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the 1,797 digits held out")
    split_seed: int = 0


class TensorLoader:
    """Rows of (features, labels) in batches; rank ``r`` of ``w`` reads every ``w``-th batch of an epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int, world_size: int,
                 shuffle_seed: int | None) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rank, self.world_size, self.shuffle_seed = rank, world_size, shuffle_seed
        self.samples = len(x)
        batches = -(-len(x) // batch_size)
        # every rank takes the same number of training steps (DDP needs it); eval keeps every row
        self.count = batches // world_size if shuffle_seed is not None else len(range(rank, batches, world_size))

    def __len__(self) -> int:
        return self.count

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        order = torch.arange(len(self.x))
        if self.shuffle_seed is not None:
            order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.shuffle_seed + epoch))
        for step in range(skip, self.count):
            rows = order[(step * self.world_size + self.rank) * self.batch_size:][: self.batch_size]
            yield self.x[rows], self.y[rows]

    def close(self) -> None:
        pass


class MlpTask(Task):
    """A multi-layer perceptron on the 64 pixels of each digit; metric: accuracy."""

    Model, Data = MlpConfig, DigitsData
    metric, metric_label, unit = "accuracy", "accuracy", "sample"
    input_names, output_names = ("features",), ("logits",)

    @classmethod
    def check_recipe(cls, recipe: Any) -> None:
        if recipe.eval.target > 1:
            raise ValueError(f"eval.target {recipe.eval.target}: accuracy is at most 1")

    @classmethod
    def data_paths(cls, data: DigitsData, root: Path) -> None:
        return None  # in memory: scikit-learn's wheel carries it

    @classmethod
    def model_for(cls, recipe: Any) -> nn.Module:
        return cls._mlp(recipe.model)

    @classmethod
    def model_from_weights(cls, model_config: dict[str, Any], state_dict: dict[str, Any]) -> nn.Module:
        model = cls._mlp(MlpConfig(**model_config))
        model.load_state_dict(state_dict)
        return model.eval()

    @classmethod
    def model_inputs(cls, batch: Any) -> dict[str, torch.Tensor]:
        return {"features": batch[0]}

    @staticmethod
    def _mlp(cfg: MlpConfig) -> nn.Module:
        from torch import nn

        sizes = [64] + [cfg.hidden] * cfg.layers
        hidden = [layer for a, b in zip(sizes, sizes[1:]) for layer in (nn.Linear(a, b), nn.ReLU())]
        return nn.Sequential(*hidden, nn.Linear(sizes[-1], 10))

    # ------------------------------------------------------------------ the runtime

    def build_model(self) -> nn.Module:
        return self.model_for(self.recipe)

    def build_loaders(self, rank: int, world_size: int) -> tuple[TensorLoader, TensorLoader]:
        import torch
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
        y = torch.tensor(digits.target, dtype=torch.int64)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.recipe.data.split_seed))
        held = int(len(x) * self.recipe.data.val_fraction)
        val, train = order[:held], order[held:]
        batch = self.job.derived.batch_size
        return (TensorLoader(x[train], y[train], batch, rank, world_size, self.recipe.train.seed),
                TensorLoader(x[val], y[val], batch, rank, world_size, None))

    def train_step_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        import torch.nn.functional as F

        features, labels = (tensor.to(self.device) for tensor in batch)
        with self.autocast():
            loss = F.cross_entropy(model(features), labels)
        return loss, len(labels)

    def evaluate(self, model: nn.Module, loader: TensorLoader, epoch: int) -> float:
        import torch

        from jobs.rank.dist import all_reduce_sum

        correct = total = 0.0
        with torch.no_grad():
            for features, labels in loader.epoch(epoch):
                predicted = model(features.to(self.device)).argmax(dim=1).cpu()
                correct += float((predicted == labels).sum())
                total += len(labels)
        correct, total = all_reduce_sum([correct, total], self.device)
        return correct / max(total, 1.0)
