"""The GPU check, through NVML (``nvidia-ml-py``'s ``pynvml``), not parsed ``nvidia-smi`` text.

:func:`read_nvml` reads what NVML says about each GPU into plain values
(:class:`GpuFacts`); :func:`evaluate_gpus` judges them: the count equals the profile's
``gpus_per_node``, the model matches its ``gpu``, no uncorrectable ECC errors, no pending
retired pages or row remaps (nor a failed remap), and no active clock-event (throttle)
reason apart from idle. That the driver is the same on every node is judged across nodes
(:func:`jobs.preflight.result.outliers`). A value NVML does not support on a GPU (retired
pages on Ampere and newer, row remapping before it) is ``None`` and not held against it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.preflight.result import CheckResult, failed, passed, skipped

# NVML's clock-event reason bits (nvml.h, nvmlClocksEventReason*), named as nvidia-smi -q names them.
IDLE = 0x1
EVENT_REASONS = {
    0x2: "Applications Clocks Setting", 0x4: "SW Power Cap", 0x8: "HW Slowdown", 0x10: "Sync Boost",
    0x20: "SW Thermal Slowdown", 0x40: "HW Thermal Slowdown", 0x80: "HW Power Brake Slowdown",
    0x100: "Display Clock Setting",
}


@dataclass
class GpuFacts:
    """What NVML reports about one GPU (None: not supported on this GPU)."""

    index: int
    name: str
    ecc_uncorrected_volatile: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_pending: bool | None = None
    remap_failure: bool | None = None
    clock_event_reasons: int | None = None


@dataclass
class NodeGpus:
    """One node's NVML view: the driver and every GPU, or why NVML could not be read."""

    driver: str | None = None
    gpus: list[GpuFacts] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeGpus:
        return cls(driver=data.get("driver"), gpus=[GpuFacts(**g) for g in data.get("gpus", [])],
                   error=data.get("error"))


def read_nvml() -> NodeGpus:
    """Read the driver version and every GPU's health through NVML; an NVML failure is reported, not raised."""
    try:
        import pynvml
    except ImportError as exc:
        return NodeGpus(error=f"nvidia-ml-py is not installed ({exc})")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return NodeGpus(error=f"NVML: {exc}")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = [_read_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
        return NodeGpus(driver=driver, gpus=gpus)
    except pynvml.NVMLError as exc:
        return NodeGpus(error=f"NVML: {exc}")
    finally:
        pynvml.nvmlShutdown()


def _read_gpu(nvml: Any, index: int) -> GpuFacts:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    facts = GpuFacts(index=index, name=_text(nvml.nvmlDeviceGetName(handle)))
    facts.ecc_uncorrected_volatile = _supported(nvml, lambda: nvml.nvmlDeviceGetTotalEccErrors(
        handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC))
    pending = _supported(nvml, lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
    facts.retired_pages_pending = None if pending is None else pending == nvml.NVML_FEATURE_ENABLED
    remap = _supported(nvml, lambda: nvml.nvmlDeviceGetRemappedRows(handle))  # (corr, unc, pending, failure)
    if remap is not None:
        facts.remapped_rows_pending, facts.remap_failure = bool(remap[2]), bool(remap[3])
    reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    facts.clock_event_reasons = _supported(nvml, lambda: reasons(handle))
    return facts


def _supported(nvml: Any, call: Any) -> Any:
    """``call()``, or None when NVML says the GPU does not support it (or has no such data)."""
    try:
        return call()
    except (nvml.NVMLError_NotSupported, nvml.NVMLError_NoData):
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def model_matches(expected: str, name: str) -> bool:
    """Whether NVML's name (``NVIDIA A100-SXM4-80GB``, ``Tesla V100-SXM3-32GB``) is the profile's ``gpu``."""
    def norm(text: str) -> str:
        return text.lower().replace("nvidia", "").replace("tesla", "").replace(" ", "").replace("-", "")

    return norm(expected) in norm(name)


def event_reason_names(mask: int) -> list[str]:
    """The active clock-event reasons of ``mask`` other than idle, by name."""
    names = [name for bit, name in EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~(IDLE | sum(EVENT_REASONS))
    return names + ([f"reason bits {unknown:#x}"] if unknown else [])


def gpu_problems(gpu: GpuFacts, expected_model: str | None) -> list[str]:
    """What is wrong with one GPU, as short phrases (empty: healthy)."""
    problems = []
    if expected_model and not model_matches(expected_model, gpu.name):
        problems.append(f"is a {gpu.name}, the profile says {expected_model}")
    if gpu.ecc_uncorrected_volatile:
        problems.append(f"{gpu.ecc_uncorrected_volatile} uncorrectable ECC error(s)")
    if gpu.retired_pages_pending:
        problems.append("retired pages pending (reset the GPU)")
    if gpu.remapped_rows_pending:
        problems.append("row remap pending (reset the GPU)")
    if gpu.remap_failure:
        problems.append("row remapping failed (RMA candidate)")
    if gpu.clock_event_reasons:
        reasons = event_reason_names(gpu.clock_event_reasons)
        if reasons:
            problems.append("clocks held down by " + ", ".join(reasons))
    return problems


def evaluate_gpus(node: NodeGpus, expected_count: int, expected_model: str | None) -> CheckResult:
    """Judge one node's GPUs against the profile (``expected_count`` 0: the profile has no GPUs)."""
    if expected_count == 0:
        return skipped("profile has no GPUs")
    if node.error:
        return failed(node.error)
    problems = []
    if len(node.gpus) != expected_count:
        problems.append(f"{len(node.gpus)} GPU(s) visible, the profile says {expected_count}")
    for gpu in node.gpus:
        problems += [f"GPU {gpu.index} {text}" for text in gpu_problems(gpu, expected_model)]
    if problems:
        return failed("; ".join(problems))
    model = node.gpus[0].name if node.gpus else "?"
    return passed(f"{len(node.gpus)} x {model}, driver {node.driver}")
