"""The recipe schema: a recipe's hyperparameters, as every rank receives them.

``recipes/<name>.yaml`` holds one :class:`Recipe` plus named presets. ``task:`` names the
recipe's task (:mod:`jobs.tasks`): a built-in name (``image_classification``,
``translation``), an entry point of the ``podrun.tasks`` group, or ``MODULE:CLASS``. The
task's own pydantic models (its ``Model`` and ``Data``) are the schemas of the recipe's
``model:`` and ``data:`` sections; the rest is shared by every recipe. Every model forbids
unknown keys (see :mod:`jobs.contract.config_io`).

Ranks are fresh processes (``python -m jobs.run CONFIG``), so a task is found by name in
every process that reads a recipe, never registered at run time.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from jobs.contract.config_io import NAME_PATTERN, StrictModel

BUILTIN_TASKS = {
    "image_classification": "jobs.tasks.image_classification:ImageClassification",
    "translation": "jobs.tasks.translation:Translation",
}
TASK_ENTRY_POINTS = "podrun.tasks"
DEFAULT_TASK = "image_classification"
# Recipes (and resolved jobs) written before ``task:`` existed named the model instead.
TASK_OF_ARCH = {"resnet": "image_classification", "transformer": "translation"}
TASK_INTERFACE = ("Model", "Data", "metric", "unit", "build_model", "build_loaders", "train_step_loss", "evaluate")


@functools.cache
def load_task(ref: str) -> Any:
    """The task class ``ref`` names (a built-in name, a ``podrun.tasks`` entry point, or ``MODULE:CLASS``).

    Raises:
        ValueError: one line: the name is unknown, the module does not import, or the class
            lacks the task interface (:class:`jobs.tasks.base.Task`).
    """
    target = BUILTIN_TASKS.get(ref) or _entry_point(ref) or ref
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"unknown task {ref!r}: name a built-in task ({', '.join(sorted(BUILTIN_TASKS))}), "
                         f"an entry point of the {TASK_ENTRY_POINTS!r} group, or MODULE:CLASS")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"task {ref!r}: cannot import {module_name} ({exc}); "
                         "is it installed, or on PYTHONPATH where the ranks start?") from None
    task = getattr(module, attr, None)
    missing = [name for name in TASK_INTERFACE if not hasattr(task, name)]
    if task is None or missing:
        raise ValueError(f"task {ref!r}: {target} is not a task class (lacks {', '.join(missing) or attr}); "
                         "subclass jobs.tasks.base.Task")
    return task


def _entry_point(name: str) -> str | None:
    if ":" in name:
        return None
    found = metadata.entry_points(group=TASK_ENTRY_POINTS, name=name)
    return next((entry.value for entry in found), None)


class OptimConfig(StrictModel):
    name: Literal["sgd", "lars", "adam", "auto"] = "auto"  # auto: LARS above lars_above_batch
    lars_above_batch: int = Field(8192, gt=0)
    lr_per_256: float = Field(0.256, gt=0)
    base_lr: float | None = Field(None, gt=0, description="pins the LR instead of scaling it")
    end_lr: float = Field(0.0001, ge=0)
    momentum: float = Field(0.875, ge=0, lt=1)
    weight_decay: float = Field(5e-05, ge=0)
    nesterov: bool = False
    lars_eta: float = Field(0.001, gt=0)
    bn_bias_weight_decay: bool = False
    betas: tuple[float, float] = (0.9, 0.98)  # Adam
    eps: float = Field(1e-9, gt=0)  # Adam


class ScheduleConfig(StrictModel):
    warmup_epochs: float | None = Field(None, ge=0, description="None: derived from the batch")
    warmup_steps: int | None = Field(None, ge=0, description="warmup in optimizer steps; wins over epochs")
    decay: Literal["cosine", "poly", "inverse_sqrt"] = "poly"
    poly_power: float = Field(2.0, gt=0)


class TrainConfig(StrictModel):
    batch_size: int = Field(256, gt=0, description="per rank")
    global_batch_size: int | None = Field(None, gt=0, description="pins it; must divide by ranks")
    epochs: int = Field(40, gt=0)
    update_freq: int = Field(1, gt=0, description="micro-batches per optimizer step (gradient accumulation)")
    tokens_per_update: int | None = Field(None, gt=0, description="keeps the effective batch: derives update_freq")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    precision: Literal["fp32", "tf32", "amp-bf16", "amp-fp16"] = "amp-bf16"
    channels_last: bool = True
    compile: bool = False
    seed: int = 1
    log_every: int = Field(20, gt=0, description="steps between progress lines and metrics")
    stop_check_every: int = Field(10, gt=0, description="optimizer steps between the ranks' stop votes "
                                  "(a signal stops training within this many steps, twice that on GPUs)")
    checkpoint_every: int = Field(1, ge=0, description="epochs between checkpoints; 0 disables")
    keep_checkpoints: int = Field(2, gt=0)
    cpu_threads: int | None = Field(None, gt=0, description="torch threads per rank on CPU")


class EvalConfig(StrictModel):
    every_epochs: int = Field(1, gt=0)
    start_epoch: int = Field(0, ge=0, description="first epoch (0-based) that is evaluated")
    batch_size: int | None = Field(None, gt=0)
    target: float = Field(0.759, gt=0, description="top-1 in (0, 1], or BLEU")
    beam_size: int = Field(1, gt=0, description="translation: 1 is greedy")
    max_len_a: float = Field(1.2, ge=0, description="translation: decode at most a * source length + b")
    max_len_b: int = Field(10, ge=0)
    bleu_lowercase: bool = False
    bleu_tokenize: str = "13a"


class MlperfConfig(StrictModel):
    benchmark: str = "resnet"
    ruleset: str = "3.1.0"
    division: Literal["closed", "open"] = "closed"
    org: str = "podrun"
    status: Literal["cloud", "onprem", "preview", "research"] = "research"


class Recipe(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    task: str = Field(DEFAULT_TASK, description="a built-in task, a podrun.tasks entry point, or MODULE:CLASS")
    model: SerializeAsAny[StrictModel] = Field(default_factory=dict, validate_default=True,
                                               description="the task's Model schema")
    data: SerializeAsAny[StrictModel] = Field(default_factory=dict, validate_default=True,
                                              description="the task's Data schema")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    mlperf: MlperfConfig = Field(default_factory=MlperfConfig)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _task_from_model(cls, value: Any) -> Any:
        """A recipe without ``task:`` (written before it existed): the model's ``arch`` or data ``kind`` names it."""
        if not isinstance(value, dict) or "task" in value:
            return value
        return {**value, "task": cls.implied_task(value.get("model"), value.get("data"))}

    @staticmethod
    def implied_task(model: Any, data: Any) -> str:
        """The task a recipe without ``task:`` means: its model's ``arch``, its data's ``kind``, else the default."""
        arch = model.get("arch") if isinstance(model, dict) else getattr(model, "arch", None)
        kind = data.get("kind") if isinstance(data, dict) else getattr(data, "kind", None)
        return TASK_OF_ARCH.get(arch) or ("translation" if kind == "parallel_text" else DEFAULT_TASK)

    @field_validator("task")
    @classmethod
    def _task_exists(cls, value: str) -> str:
        load_task(value)
        return value

    @field_validator("model", "data", mode="before")
    @classmethod
    def _task_section(cls, value: Any, info: ValidationInfo) -> Any:
        if "task" not in info.data:
            raise ValueError("cannot be checked: the task did not load")
        schema = section_schema(info.data["task"], info.field_name)
        return value if isinstance(value, schema) else schema.model_validate(value)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        self.task_class().check_recipe(self)
        return self

    def task_class(self) -> Any:
        """The class of this recipe's task (:class:`jobs.tasks.base.Task`)."""
        return load_task(self.task)

    @classmethod
    def section_model(cls, section: str, data: Any) -> Any:
        """The schema of ``model:`` or ``data:`` for the recipe ``data`` (a mapping); for error messages."""
        if section not in ("model", "data") or not isinstance(data, dict):
            return None
        try:
            return section_schema(cls._task_from_model(data).get("task", DEFAULT_TASK), section)
        except ValueError:
            return None


def section_schema(task: str, section: str) -> type[StrictModel]:
    """The pydantic model of a recipe section (``model`` or ``data``) for ``task``."""
    return load_task(task).Model if section == "model" else load_task(task).Data
