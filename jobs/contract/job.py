"""The job a rank receives: everything it needs to train, and nothing about placement.

The launcher resolves a job spec, a recipe and a cluster profile into a
:class:`ResolvedJob` and writes it as ``config.resolved.yaml``; every rank reads it with
:func:`load_resolved` (``python -m jobs.run CONFIG``). Placement (Slurm flags, SSH logins,
containers, Ray addresses) stays in the launcher's schema (:mod:`orchestrator.spec.profiles`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from jobs.contract.config_io import NAME_PATTERN, StrictModel, read_yaml, validate
from jobs.contract.errors import ConfigError
from jobs.contract.preflight_spec import PreflightSpec
from jobs.contract.private_files import write_private
from jobs.contract.recipe import Recipe

CONFIG_FILE = "config.resolved.yaml"


class HorovodConfig(StrictModel):
    """Horovod's knobs (used with ``comm: horovod``); applied before ``hvd.init()``."""

    fp16_compression: bool = False
    fusion_threshold_mb: int = Field(64, ge=0)
    cycle_time_ms: float = Field(1.0, gt=0)
    hierarchical_allreduce: bool = False
    timeline: bool = Field(False, description="write HOROVOD_TIMELINE; it becomes an MLflow artifact")


class RegistryConfig(StrictModel):
    """The trained model in MLflow: logged and registered under the recipe's name when the target is reached.

    ``registry: false`` in a job spec turns it off; weights larger than ``max_model_mb`` are
    not uploaded (the store's upload limit), with a message naming the checkpoint instead.
    """

    enabled: bool = True
    max_model_mb: float = Field(2048, gt=0, description="larger weights are not logged")

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: object) -> object:
        return {"enabled": value} if isinstance(value, bool) else value


class StragglerConfig(StrictModel):
    """The straggler check (:mod:`jobs.rank.stragglers`); ``straggler: false`` in a job spec turns it off.

    A rank whose time outside collectives is ``threshold`` times the median or more, for
    ``window`` log windows in a row, is named; ``action: replace`` also stops the job after a
    checkpoint (exit 8) so that it restarts without that rank's host.
    """

    enabled: bool = True
    threshold: float = Field(1.2, gt=1, description="slower than the median by this factor (1.2: 20% slower)")
    window: int = Field(5, ge=1, description="log windows in a row (train.log_every steps each)")
    action: Literal["warn", "replace"] = Field("warn", description="replace: stop after a checkpoint, exit 8")

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: object) -> object:
        return {"enabled": value} if isinstance(value, bool) else value


class Derivation(StrictModel):
    """How the scale-dependent hyperparameters were obtained (logged to MLflow)."""

    world_size: int
    batch_size: int
    global_batch_size: int
    optimizer: str
    lr: float
    warmup_epochs: float
    update_freq: int = 1
    notes: list[str] = Field(default_factory=list)


class ResolvedJob(StrictModel):
    """Everything a rank needs, written once by the launcher as ``config.resolved.yaml``."""

    job_id: str
    name: str = Field(pattern=NAME_PATTERN)
    recipe: Recipe
    preset: str | None = None
    cluster: str = Field(description="the cluster profile's name (a label in MLflow)")
    backend: str = Field(description="what started the ranks: local, slurm, ray, ...")
    nodes: int = Field(gt=0)
    tasks_per_node: int = Field(gt=0)
    world_size: int = Field(gt=0)
    device: Literal["cpu", "cuda"]
    comm: Literal["ddp", "horovod"] = "ddp"
    horovod: HorovodConfig = Field(default_factory=HorovodConfig)
    derived: Derivation
    data_dir: str
    checkpoint_dir: str
    job_dir: str
    tracking_uri: str
    experiment: str = Field(description="the MLflow experiment")
    git_sha: str = "unknown"
    preflight: PreflightSpec | None = Field(None, description="the node checks before training; None: off")
    tags: dict[str, str] = Field(default_factory=dict, description="more MLflow run tags (a sweep's parent run)")
    watchdog_timeout_s: float = Field(600, ge=0, description="see jobs.rank.watchdog; 0: off")
    straggler: StragglerConfig = Field(default_factory=StragglerConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    system_metrics_interval_s: float = Field(10.0, ge=0, description="per-node system metrics; 0 turns them off")
    command: str = Field("", description="the podrun command line that reproduces the job (no secrets)")


def load_resolved(path: Path) -> ResolvedJob:
    """Read the launcher's resolved config.

    Raises:
        ConfigError: the file is missing or does not match this version of podrun.
    """
    return validate(ResolvedJob, read_yaml(path, expand=False), str(path))  # as the launcher wrote it


def job_document(job: ResolvedJob) -> dict:
    """``job`` as plain data, leaving out what is implied: no tags, the default straggler check, a task the
    recipe's sections name."""
    # Most jobs have neither: their rendered scripts stay as they were.
    skip = {"tags"} if not job.tags else set()
    skip |= {"straggler"} if job.straggler == StragglerConfig() else set()
    data = job.model_dump(mode="json", exclude=skip or None)
    if job.recipe.task == job.recipe.implied_task(job.recipe.model, job.recipe.data):
        del data["recipe"]["task"]  # the form of earlier releases, which read it the same way
    return data


def dump_resolved(job: ResolvedJob) -> str:
    """The YAML text of ``job`` that :func:`load_resolved` reads back."""
    return yaml.safe_dump(job_document(job), sort_keys=False)


def write_resolved(job: ResolvedJob, path: Path) -> None:
    """Write ``job`` where :func:`load_resolved` reads it (readable by its owner only)."""
    write_private(path, dump_resolved(job))


def resized(job: ResolvedJob, world_size: int) -> ResolvedJob:
    """``job`` on ``world_size`` ranks (an elastic Ray run after a lost node), with the same global batch.

    Each rank's batch stays; gradient accumulation (``update_freq``) makes up for the missing
    ranks, so the optimizer steps, the learning rate and its schedule are those of the full job.

    Raises:
        ConfigError: the global batch does not divide into ``world_size`` ranks' micro-batches.
    """
    if world_size == job.world_size:
        return job
    micro_batches = job.derived.update_freq * job.world_size
    if micro_batches % world_size:
        raise ConfigError(f"an elastic run of {job.world_size} ranks cannot keep its global batch on {world_size} "
                          f"(update_freq {job.derived.update_freq} x {job.world_size} ranks does not divide by "
                          f"{world_size}): set ray.min_workers to a divisor of {job.world_size}")
    job = job.model_copy(deep=True)
    job.derived.notes.append(f"elastic: {world_size} of {job.world_size} ranks, update_freq "
                             f"{job.derived.update_freq} -> {micro_batches // world_size}")
    job.derived.update_freq = micro_batches // world_size
    job.world_size = world_size
    job.nodes = max(1, world_size // job.tasks_per_node)
    return job


def apply_array_task(job: ResolvedJob, env: dict[str, str]) -> ResolvedJob:
    """Give each task of a Slurm job array (repeated runs, MLPerf's NEXP) its own seed and folders."""
    task = env.get("SLURM_ARRAY_TASK_ID")
    if not task:
        return job
    job = job.model_copy(deep=True)
    job.recipe.train.seed += int(task)
    job.checkpoint_dir = str(Path(job.checkpoint_dir) / f"array-{task}")
    job.job_dir = str(Path(job.job_dir) / f"array-{task}")
    return job


NODE_PLACEHOLDER = "%n"


def apply_node_paths(job: ResolvedJob, node: str) -> ResolvedJob:
    """Replace ``%n`` in the data and checkpoint folders by this node's name (node-local storage)."""
    if NODE_PLACEHOLDER not in job.data_dir + job.checkpoint_dir:
        return job
    job = job.model_copy(deep=True)
    job.data_dir = job.data_dir.replace(NODE_PLACEHOLDER, node)
    job.checkpoint_dir = job.checkpoint_dir.replace(NODE_PLACEHOLDER, node)
    return job
