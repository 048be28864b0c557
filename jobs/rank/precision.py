"""Precision on the device a rank really got: autocast, the loss scaler, and the start-up check.

``fp32`` runs as is; ``tf32`` lets CUDA matmuls and convolutions use TF32; ``amp-bf16`` and
``amp-fp16`` run the forward pass under ``torch.autocast``, and ``amp-fp16`` scales the
loss with a ``torch.amp.GradScaler`` (whose scale and growth tracker a checkpoint keeps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from jobs.contract.errors import ConfigError
from jobs.contract.modes import precision_problem

AMP_DTYPES = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """A zero-argument context factory for ``precision`` (and the TF32 switches on CUDA)."""
    if device.type == "cuda":
        allow_tf32 = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
    dtype = AMP_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler: dynamic for ``amp-fp16``, a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "amp-fp16")


def check_precision(precision: str, device: torch.device) -> str | None:
    """A warning line where ``precision`` runs far slower than fp32 on ``device``, else None.

    Raises:
        ConfigError: ``precision`` cannot run on ``device`` (the message names the fix).
    """
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    problem = precision_problem(precision, device.type, capability=capability)
    if problem:
        raise ConfigError(problem)
    if device.type != "cpu" or precision not in AMP_DTYPES:
        return None
    native = {"amp-bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported,
              "amp-fp16": torch.ops.mkldnn._is_mkldnn_fp16_supported}[precision]()
    if native:
        return None
    kind = precision.removeprefix("amp-")
    return (f"[warn] train.precision {precision}: oneDNN has no native {kind} kernels for this CPU (they need "
            f"AVX-512 or AMX), so {kind} is emulated and trains several times slower than fp32; "
            f"--set train.precision=fp32 is faster here")
