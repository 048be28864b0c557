"""Job specs (``recipes/jobs/*.yaml``) and the launch plan the launcher resolves them into.

A job spec names a recipe, a preset, a cluster profile, a scale and overrides. Resolving
it (:func:`orchestrator.spec.resolve.load_job`) gives a :class:`LaunchPlan`: the spec, the
profile, and the :class:`jobs.contract.job.ResolvedJob` that every rank receives. Backends render
and submit plans; ranks only ever see ``plan.job``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, field_validator

from jobs.contract.config_io import NAME_PATTERN, StrictModel, read_yaml, validate
from jobs.contract.job import HorovodConfig, RegistryConfig, ResolvedJob, StragglerConfig, job_document
from jobs.contract.private_files import write_private
from orchestrator.spec.backend_names import check_backend_name
from orchestrator.spec.profiles import ClusterProfile


class JobSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    recipe: str
    preset: str | None = None
    cluster: str = "local"
    backend: str | None = Field(None, description="None: the profile's scheduler")
    nodes: int = Field(1, gt=0)
    tasks_per_node: int | None = Field(None, gt=0, description="None: one per GPU, or 1 on CPU")
    comm: Literal["ddp", "horovod"] = "ddp"
    horovod: HorovodConfig = Field(default_factory=HorovodConfig)
    watchdog_timeout_s: float = Field(600, ge=0, description="a rank without progress this long fails the job, "
                                                             "named (jobs.rank.watchdog); 0: off")
    straggler: StragglerConfig = Field(default_factory=StragglerConfig,
                                       description="a slow rank named (jobs.rank.stragglers); false: off")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="false: no model in MLflow")
    system_metrics_interval_s: float = Field(10.0, ge=0, description="per-node system metrics; 0: off")
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("backend")
    @classmethod
    def _backend_known(cls, name: str | None) -> str | None:
        return None if name is None else check_backend_name(name)


class LaunchPlan(StrictModel):
    """What the launcher resolved: the spec, the profile, and the job every rank receives."""

    spec: JobSpec
    profile: ClusterProfile
    job: ResolvedJob
    sources: dict[str, str] = Field(default_factory=dict, exclude=True,
                                    description="the files read (job spec, recipe, cluster file); render names them")
    # Secret values whose env entries read ${NAME}; held in memory, never written (orchestrator.spec.job_env).
    _secret_env: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def secret_env(self) -> dict[str, str]:
        return self._secret_env

    # The rank job's most used fields, read through the plan.
    backend = property(lambda self: self.job.backend)
    job_id = property(lambda self: self.job.job_id)
    recipe = property(lambda self: self.job.recipe)
    world_size = property(lambda self: self.job.world_size)
    tasks_per_node = property(lambda self: self.job.tasks_per_node)
    device = property(lambda self: self.job.device)
    derived = property(lambda self: self.job.derived)
    data_dir = property(lambda self: self.job.data_dir)
    checkpoint_dir = property(lambda self: self.job.checkpoint_dir)
    job_dir = property(lambda self: self.job.job_dir)
    tracking_uri = property(lambda self: self.job.tracking_uri)


PLAN_FILE = "launch.yaml"


def dump_plan(plan: LaunchPlan) -> str:
    """The plan as YAML text (:func:`load_plan_file` and the Ray driver read it back)."""
    data = plan.model_dump(mode="json")
    if plan.spec.straggler == StragglerConfig():
        del data["spec"]["straggler"]  # the default: plans (and the scripts that carry them) stay as they were
    data["job"] = job_document(plan.job)
    return yaml.safe_dump(data, sort_keys=False)


def write_plan(plan: LaunchPlan, path: Path) -> None:
    """Write the plan for the launcher's own processes (the local supervisor), readable by its owner only."""
    write_private(path, dump_plan(plan))


def load_plan_file(path: Path) -> LaunchPlan:
    """Read a plan written by :func:`write_plan`.

    Raises:
        ConfigError: the file is missing or malformed.
    """
    return validate(LaunchPlan, read_yaml(path), str(path))
