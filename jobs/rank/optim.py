"""Optimizers and the learning-rate schedule of the ResNet-50 recipe.

SGD with momentum for ordinary batches, LARS (You et al.) for large global batches.
BatchNorm and bias parameters get no weight decay and no LARS adaptation, as in
NVIDIA's MLPerf recipe. The LR is a pure function of the global step, so a resumed run
needs no scheduler state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from jobs.contract.job import Derivation
from jobs.contract.recipe import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float, decay_bn_bias: bool) -> list[dict]:
    """Split parameters into a decayed group (conv/linear weights) and an exempt one."""
    decay, exempt = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (exempt if param.ndim <= 1 and not decay_bn_bias else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": exempt, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio ``eta * |w| / (|g| + wd * |w|)``."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, eta: float = 0.001,
                 eps: float = 0.0) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad.add(param, alpha=group["weight_decay"])
                if group["lars"]:
                    update.mul_(self._trust_ratio(param, group))
                buf = self.state[param].setdefault("momentum_buffer", torch.zeros_like(param))
                buf.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                param.sub_(buf)
        return loss

    @staticmethod
    def _trust_ratio(param: torch.Tensor, group: dict) -> torch.Tensor:
        w_norm, g_norm = param.norm(), param.grad.norm()
        ratio = group["eta"] * w_norm / (g_norm + group["weight_decay"] * w_norm + group["eps"])
        return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))


def build_optimizer(model: nn.Module, cfg: OptimConfig, derived: Derivation) -> torch.optim.Optimizer:
    """The optimizer ``derived.optimizer`` names, at the derived LR."""
    groups = param_groups(model, cfg.weight_decay, cfg.bn_bias_weight_decay)
    if derived.optimizer == "lars":
        return LARS(groups, lr=derived.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta)
    for group in groups:
        group.pop("lars")
    if derived.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=derived.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.SGD(groups, lr=derived.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def learning_rate(step: int, *, base_lr: float, end_lr: float, warmup_steps: int, total_steps: int,
                  schedule: ScheduleConfig) -> float:
    """LR at global ``step``: linear warmup, then cosine, polynomial or inverse-sqrt decay."""
    if schedule.decay == "inverse_sqrt":  # Vaswani et al.: peaks at base_lr after warmup
        warmup = max(warmup_steps, 1)
        return base_lr * min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule.decay == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = (1 - progress) ** schedule.poly_power
    return end_lr + (base_lr - end_lr) * factor


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
