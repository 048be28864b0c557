"""What a node's preflight checks: the checks, their thresholds and timeouts.

The cluster profile's ``preflight:`` section (:class:`orchestrator.spec.profiles.PreflightConfig`)
extends :class:`PreflightSettings`; the launcher adds what the profile expects of a node
(GPU count and model, InfiniBand HCAs) and hands every rank a :class:`PreflightSpec` inside
its resolved job.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from jobs.contract.config_io import StrictModel

CheckName = Literal["gpu", "infiniband", "collectives", "storage", "software"]
CHECKS: tuple[CheckName, ...] = ("gpu", "infiniband", "collectives", "storage", "software")
STARTUP_MARGIN_S = 120


class CheckTimeouts(StrictModel):
    """Seconds each check may take; a hung NVML call or filesystem fails its check, not the job."""

    gpu: float = Field(30, gt=0)
    infiniband: float = Field(10, gt=0)
    collectives: float = Field(120, gt=0, description="process group set-up, all-reduce and pairwise tests")
    storage: float = Field(30, gt=0)
    software: float = Field(60, gt=0, description="includes importing torch")


class PreflightSettings(StrictModel):
    """The checks and their thresholds, as a profile's ``preflight:`` section writes them."""

    checks: list[CheckName] | None = Field(
        None, description="None: every check that applies (infiniband only when the profile lists HCAs)")
    min_busbw_gbps: float | None = Field(
        None, gt=0, description="all-reduce bus bandwidth (nccl-tests' busbw, GB/s) below which a run fails")
    min_free_gb: float = Field(10, ge=0, description="free space the checkpoint root needs")
    max_clock_skew_s: float = Field(1.0, gt=0, description="largest clock difference between nodes")
    ib_rate_gbps: float | None = Field(
        None, gt=0, description="expected port rate; None: every listed port runs at the node's fastest rate")
    allreduce_mb: float = Field(32, gt=0, description="the all-reduce test's buffer per rank (MB)")
    timeouts: CheckTimeouts = Field(default_factory=CheckTimeouts)

    def budget_s(self) -> float:
        """The longest a whole preflight may take: every check's timeout plus start-up (imports, srun)."""
        return sum(self.timeouts.model_dump().values()) + STARTUP_MARGIN_S

    def runs(self, name: CheckName) -> bool:
        """Whether ``name`` runs (a check that is off is reported as skipped)."""
        return self.checks is None or name in self.checks


class PreflightSpec(PreflightSettings):
    """What every rank of a preflight receives: the settings plus what the profile expects of a node."""

    gpus_per_node: int = Field(0, ge=0, description="0: the profile has no GPUs")
    gpu_model: str | None = Field(None, description="the profile's gpu, matched against NVML's name")
    hcas: list[str] = Field(default_factory=list, description="InfiniBand HCAs, NAME or NAME:PORT")
