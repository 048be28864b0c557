"""The bare PyTorch training loop that ``bench/step.py`` holds podrun's loop against.

No podrun code: plain torch (autocast, GradScaler, DDP, torch.compile). The model and
the batches come from the caller, so both loops do the same work; :func:`bare_steps` is
the loop a person would write by hand, and the one the ratio podrun/bare is taken against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# (model inputs, target, items counted) of one step
Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor, int]


def bare_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batches: Sequence[Batch], amp_dtype: torch.dtype | None, loss_in_fp32: bool,
               smoothing: float, ignore_index: int = -100) -> int:
    """One optimizer step per batch; returns the items processed (images or target tokens)."""
    items = 0
    for inputs, target, count in batches:
        with torch.autocast(target.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(*inputs)
            if not loss_in_fp32:
                loss = F.cross_entropy(out, target, label_smoothing=smoothing)
        if loss_in_fp32:  # the translation loss: summed in fp32 over real tokens, divided by their count
            loss = F.cross_entropy(out.float().flatten(0, 1), target.flatten(), ignore_index=ignore_index,
                                   label_smoothing=smoothing, reduction="sum") / count
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        items += count
    return items


def bare_model(model: torch.nn.Module, world_size: int, compile_: bool, dynamic: bool | None) -> torch.nn.Module:
    """DDP when there is more than one rank, then ``torch.compile`` when asked (the order podrun uses)."""
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    return torch.compile(model, dynamic=dynamic) if compile_ else model


def sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on BatchNorm and bias parameters (the usual ResNet practice)."""
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def adamw(params, lr: float, betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": sgd, "adamw": adamw}
