"""What a recipe's task is: everything that differs between recipes, in one class per recipe.

The training loop (:mod:`jobs.train`) is shared by every recipe and every backend; a task
answers the recipe-specific questions. A recipe names its task (``task:`` in its YAML, see
:mod:`jobs.contract.recipe`), and every part of podrun asks the task instead of switching on
the model: the recipe schema (``Model``, ``Data``), the loop (model, loaders, loss,
evaluation, MLPerf keys), the data checks (:meth:`Task.data_paths`), the model registry and
``podrun export`` (:meth:`Task.model_from_weights`, :meth:`Task.model_inputs`,
:meth:`Task.onnx_graphs`), the run page (``metric_label``, ``higher_is_better``) and
``podrun predict`` (``unit``, :meth:`Task.model_for`).

A new recipe is a YAML file and a task file: subclass :class:`Task`, set the class
attributes, write the four runtime methods. Keep torch imports inside the methods: the
launcher reads the class (``podrun render`` imports no torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from jobs.contract.config_io import StrictModel
from jobs.contract.job import ResolvedJob

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from jobs.contract.recipe import Recipe
    from jobs.rank.mlperf_log import MlperfLogger


class Loader(Protocol):
    samples: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Any]: ...

    def close(self) -> None: ...


@dataclass
class OnnxGraph:
    """One ONNX file of an exported model: what to export and how to check it."""

    suffix: str  # "" for the whole model, "-encoder" ...
    module: Any  # the nn.Module to export
    args: tuple[Any, ...]  # example inputs (tensors)
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: tuple[dict[int, Any], ...]
    feeds: dict[str, Any]  # ONNX Runtime's inputs (numpy), to compare with ``module(*args)``


class Task:
    """One recipe's task. Subclass it, set the class attributes and write the runtime methods."""

    # ---- what the recipe holds: the schemas of its ``model:`` and ``data:`` sections
    Model: ClassVar[type[StrictModel]]
    Data: ClassVar[type[StrictModel]]
    # ---- the target metric: ``eval_<metric>`` in MLflow, ``metric_label`` where people read it
    metric: ClassVar[str]
    metric_label: ClassVar[str]
    metric_digits: ClassVar[int] = 3
    higher_is_better: ClassVar[bool] = True
    # ---- what throughput counts (``img``, ``tok``, ...), and whether batches change shape
    unit: ClassVar[str]
    varying_shapes: ClassVar[bool] = False  # torch.compile(dynamic=True) at once
    # ---- the model's inputs (``forward``'s order), for the registry and export
    input_names: ClassVar[tuple[str, ...]]
    output_names: ClassVar[tuple[str, ...]] = ("output",)
    dynamic_dims: ClassVar[Literal["batch", "all"]] = "batch"  # which input dimensions vary

    # ------------------------------------------------------------------ questions without a job

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        """Raise ValueError (one line) when the recipe's sections do not go together."""

    @classmethod
    def reached(cls, value: float, target: float) -> bool:
        """Whether an evaluation ``value`` meets ``target`` (in the metric's direction)."""
        return value >= target if cls.higher_is_better else value <= target

    @classmethod
    def best(cls, values: list[float]) -> float | None:
        """The best of ``values`` in the metric's direction (None when there are none)."""
        if not values:
            return None
        return max(values) if cls.higher_is_better else min(values)

    @classmethod
    def data_paths(cls, data: Any, root: Path) -> dict[str, list[Path]] | None:
        """The files or folders of each split (``train``, ``val``) under ``root``; None: no data on disk."""
        raise NotImplementedError

    @classmethod
    def data_hint(cls, data: Any, root: Path) -> str:
        """How to make the data set when it is missing (the start of a one-line error)."""
        return f"put the data set under {root}"

    @classmethod
    def fixed_batch(cls, recipe: Recipe) -> tuple[int, str] | None:
        """``(per-rank batch, what it counts)`` when the data section fixes it (tokens); None: ``train.batch_size``."""
        return None

    @classmethod
    def model_for(cls, recipe: Recipe) -> nn.Module:
        """The recipe's model without data (parameter counts; call it under ``torch.device("meta")``)."""
        raise NotImplementedError

    @classmethod
    def model_from_weights(cls, model_config: dict[str, Any], state_dict: dict[str, Any]) -> nn.Module:
        """The model of a ``model:`` section with ``state_dict`` loaded, in eval mode on the CPU.

        Raises:
            RuntimeError: the weights do not fit the model.
        """
        raise NotImplementedError

    @classmethod
    def model_inputs(cls, batch: Any) -> dict[str, torch.Tensor]:
        """The model's inputs in one validation batch, by ``input_names``."""
        raise NotImplementedError

    @classmethod
    def onnx_graphs(cls, model: nn.Module, inputs: tuple[np.ndarray, ...], model_config: dict[str, Any]
                    ) -> list[OnnxGraph]:
        """What ``podrun export`` writes: by default the whole model, its batch dimension dynamic."""
        import torch
        from torch.export import Dim

        batch = Dim("batch")
        args = tuple(torch.from_numpy(array) for array in inputs)
        return [OnnxGraph("", model, args, list(cls.input_names), list(cls.output_names),
                          tuple({0: batch} for _ in args), dict(zip(cls.input_names, inputs)))]

    # ------------------------------------------------------------------ the runtime (one per rank)

    def __init__(self, job: ResolvedJob, device: torch.device, autocast: Any) -> None:
        self.job, self.recipe = job, job.recipe
        self.device, self.autocast = device, autocast

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_loaders(self, rank: int, world_size: int) -> tuple[Loader, Loader]:
        raise NotImplementedError

    def train_step_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """The loss of one micro-batch and how many ``unit`` it holds."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Loader, epoch: int) -> float:
        """The metric over the whole validation split (the same value on every rank)."""
        raise NotImplementedError

    def log_hparams(self, mllog: MlperfLogger, train: Loader, val: Loader) -> None:
        """The MLPerf hyperparameter keys of the benchmark (none by default)."""


def build_task(job: ResolvedJob, device: torch.device, autocast: Any) -> Task:
    """The task of the job's recipe, for this rank."""
    return job.recipe.task_class()(job, device, autocast)
