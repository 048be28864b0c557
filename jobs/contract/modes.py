"""Which training modes (precision, compile) can run where: rules shared by the launcher and the ranks.

No torch here: ``podrun render`` checks a job with these rules before anything starts
(:func:`mode_problem`, from :mod:`orchestrator.spec.resolve`), and a rank checks the device it
really got at start (:mod:`jobs.rank.precision`). A mode that cannot run is a one-line error
naming the fix; a mode that runs far slower than fp32 is one warning line at start.

* ``tf32`` is a matmul mode of NVIDIA Tensor Cores (Ampere and newer): it does not exist on a CPU.
* ``amp-bf16`` needs bf16 Tensor Cores (Ampere and newer, compute capability 8.0): a V100
  or a T4 has none; ``amp-fp16`` (with its loss scaler) is their mixed precision.
* ``train.compile`` on CPU generates C++ and needs a compiler (``$CXX``, g++ or clang++).
"""

from __future__ import annotations

import os
import re
import shutil

# GPU models before Ampere (no bf16, no TF32), as a profile's ``gpu:`` or NVML names them.
PRE_AMPERE = re.compile(r"V100|P100|P40|\bP4\b|\bT4\b|K80|K40|M40|M60|TITAN V|QUADRO (GV|RTX)|RTX 20|GTX", re.I)
AMPERE = (8, 0)
COMPILERS = ("g++", "c++", "clang++")


def precision_problem(precision: str, device: str, gpu: str | None = None,
                      capability: tuple[int, int] | None = None) -> str | None:
    """Why ``precision`` cannot run on ``device`` ('cpu' or 'cuda'), with the fix; None if it can.

    ``gpu`` (a model name) or ``capability`` (CUDA compute capability) describe the GPU when known.
    """
    if precision == "tf32" and device == "cpu":
        return ("train.precision tf32 is a mode of NVIDIA Tensor Cores (Ampere or newer); "
                "on CPU use --set train.precision=fp32")
    if device != "cuda" or precision not in ("tf32", "amp-bf16"):
        return None
    if capability is not None:
        old, what = capability < AMPERE, f"compute capability {capability[0]}.{capability[1]}"
    else:
        old, what = bool(gpu and PRE_AMPERE.search(gpu)), gpu or "unknown"
    if not old:
        return None
    fix = "amp-fp16" if precision == "amp-bf16" else "fp32"
    return (f"train.precision {precision} needs an Ampere or newer GPU (compute capability 8.0); {what} has no "
            f"{'bf16' if precision == 'amp-bf16' else 'TF32'} Tensor Cores: use --set train.precision={fix}")


def cpu_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU (``$CXX`` first), or None."""
    for name in filter(None, (os.environ.get("CXX"), *COMPILERS)):
        found = shutil.which(name)
        if found:
            return found
    return None


def compile_problem(device: str, compiler: str | None) -> str | None:
    """Why ``train.compile`` cannot run on ``device`` with ``compiler`` (see :func:`cpu_compiler`); None if it can."""
    if device == "cpu" and compiler is None:
        return ("train.compile on CPU needs a C++ compiler (g++ or clang++, or $CXX) and none is on PATH: "
                "install one (apt-get install g++) or use --set train.compile=false")
    return None


def mode_problem(precision: str, compile_: bool, device: str, *, gpu: str | None = None,
                 check_compiler: bool = False) -> str | None:
    """The first reason the job's modes cannot run on ``device``, or None.

    ``check_compiler``: this machine is where the ranks run (the local backend), so look for
    a C++ compiler here.
    """
    problem = precision_problem(precision, device, gpu=gpu)
    if problem is None and compile_ and check_compiler:
        problem = compile_problem(device, cpu_compiler())
    return problem
