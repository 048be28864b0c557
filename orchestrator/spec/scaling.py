"""Scaling rules: derive the scale-dependent hyperparameters from the world size.

The rules follow NVIDIA's MLPerf ResNet-50 practice: the learning rate grows linearly
with the global batch (per 256 images), warmup grows with the batch, and LARS replaces
SGD above a global-batch threshold. Any of them can be pinned in the recipe; the
returned :class:`Derivation` carries notes that say which rule produced each number, so
a reviewer sees why in MLflow.
"""

from __future__ import annotations

import math

from jobs.contract.job import Derivation
from jobs.contract.recipe import Recipe
from orchestrator.errors import ConfigError

WARMUP_EPOCHS_PER_4K = 2.0
MAX_WARMUP_EPOCHS = 5.0


def derive(recipe: Recipe, world_size: int) -> Derivation:
    """Derive batch, optimizer, LR and warmup for ``world_size`` ranks.

    Raises:
        ConfigError: a pinned global batch does not divide by the number of ranks.
    """
    notes: list[str] = []
    batch, global_batch = _batches(recipe, world_size, notes)
    update_freq = _update_freq(recipe, global_batch, notes)
    global_batch *= update_freq
    optimizer = _optimizer(recipe, global_batch, notes)
    lr = _learning_rate(recipe, global_batch, notes)
    warmup = _warmup(recipe, global_batch, notes)
    return Derivation(
        world_size=world_size,
        batch_size=batch,
        global_batch_size=global_batch,
        optimizer=optimizer,
        lr=lr,
        warmup_epochs=warmup,
        update_freq=update_freq,
        notes=notes,
    )


def _update_freq(recipe: Recipe, global_batch: int, notes: list[str]) -> int:
    """Gradient accumulation; ``tokens_per_update`` keeps the effective batch at any GPU count."""
    target = recipe.train.tokens_per_update
    if target is None:
        if recipe.train.update_freq > 1:
            notes.append(f"update_freq {recipe.train.update_freq} pinned")
        return recipe.train.update_freq
    update_freq = max(1, math.ceil(target / global_batch))
    notes.append(f"update_freq {update_freq} = ceil({target} tokens per update / {global_batch} per step)")
    return update_freq


def _batches(recipe: Recipe, world_size: int, notes: list[str]) -> tuple[int, int]:
    fixed = recipe.task_class().fixed_batch(recipe)  # e.g. tokens per rank, set by the data section
    if fixed is not None:
        count, what = fixed
        notes.append(f"{count * world_size} {what} per step = {count} per rank x {world_size} ranks")
        return count, count * world_size
    pinned = recipe.train.global_batch_size
    if pinned is None:
        global_batch = recipe.train.batch_size * world_size
        notes.append(f"global batch {global_batch} = {recipe.train.batch_size} per rank x {world_size} ranks")
        return recipe.train.batch_size, global_batch
    if pinned % world_size:
        raise ConfigError(
            f"train.global_batch_size={pinned} does not divide by {world_size} ranks: "
            f"use a multiple of {world_size}, or unset it and set train.batch_size per rank"
        )
    notes.append(f"global batch {pinned} pinned; {pinned // world_size} per rank x {world_size} ranks")
    return pinned // world_size, pinned


def _optimizer(recipe: Recipe, global_batch: int, notes: list[str]) -> str:
    name = recipe.optim.name
    if name != "auto":
        notes.append(f"optimizer {name} pinned")
        return name
    threshold = recipe.optim.lars_above_batch
    chosen = "lars" if global_batch > threshold else "sgd"
    notes.append(f"optimizer {chosen}: global batch {global_batch} {'>' if chosen == 'lars' else '<='} {threshold}")
    return chosen


def _learning_rate(recipe: Recipe, global_batch: int, notes: list[str]) -> float:
    if recipe.optim.base_lr is not None:
        notes.append(f"lr {recipe.optim.base_lr} pinned")
        return recipe.optim.base_lr
    if recipe.optim.name == "adam":
        raise ConfigError("optim.base_lr is required with optim.name=adam (Adam's LR is not scaled with the batch)")
    # MLPerf's closed division wants the base LR on a 0.001 grid.
    lr = max(round(recipe.optim.lr_per_256 * global_batch / 256, 3), 0.001)
    notes.append(f"lr {lr} = {recipe.optim.lr_per_256} x {global_batch}/256 (linear scaling)")
    return lr


def _warmup(recipe: Recipe, global_batch: int, notes: list[str]) -> float:
    if recipe.schedule.warmup_steps is not None:
        notes.append(f"warmup {recipe.schedule.warmup_steps} steps pinned")
        return 0.0
    pinned = recipe.schedule.warmup_epochs
    if pinned is not None:
        notes.append(f"warmup {pinned} epochs pinned")
        return pinned
    warmup = round(min(MAX_WARMUP_EPOCHS, max(1.0, WARMUP_EPOCHS_PER_4K * global_batch / 4096)), 2)
    notes.append(f"warmup {warmup} epochs = {WARMUP_EPOCHS_PER_4K} per 4096 images of global batch, "
                 f"1..{MAX_WARMUP_EPOCHS}")
    return warmup
