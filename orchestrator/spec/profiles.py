"""Cluster profiles: where and how jobs run (``cluster.yaml``).

A profile names a scheduler (a backend), the shape of its nodes, the InfiniBand and NCCL
environment, a container, the data and checkpoint roots, the MLflow store, and the
scheduler's own settings (``slurm:``, ``ray:``). Ranks never see a profile: the launcher
turns what they need into a :class:`jobs.contract.job.ResolvedJob`.

The cluster file is ``--cluster-file``, then ``$PODRUN_CLUSTER_FILE``, then
``./cluster.yaml``, then ``~/.config/podrun/cluster.yaml``, then the one bundled with
podrun (:mod:`orchestrator.spec.paths`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from jobs.contract.config_io import EnvMap, StrictModel, read_yaml, validate
from jobs.contract.preflight_spec import PreflightSettings, PreflightSpec
from orchestrator.spec.backend_names import check_backend_name
from orchestrator.spec.paths import find_cluster_file


class ContainerConfig(StrictModel):
    image: str | None = None
    mounts: list[str] = Field(default_factory=list)
    workdir: str | None = None
    mount_home: bool = False


class InterconnectConfig(StrictModel):
    """InfiniBand HCAs and the NCCL/UCX environment that goes with them."""

    hcas: list[str] = Field(default_factory=list)
    env: EnvMap = Field(default_factory=dict)
    # Bandwidths for `podrun predict` (orchestrator/studies/predict_model.py): NVLink inside a node, HCAs between.
    nvlink_gbs: float | None = Field(None, gt=0, description="one GPU's NVLink/NVSwitch bandwidth, GB/s one way")
    link_gbps: float | None = Field(None, gt=0, description="each HCA's link rate, Gb/s (EDR 100, HDR 200, NDR 400)")
    latency_us: float = Field(5.0, gt=0, description="one hop between nodes, microseconds")


class MlflowConfig(StrictModel):
    tracking_uri: str | None = None  # None: sqlite file under the podrun home
    experiment: str | None = None  # None: the recipe's name


class LoginConfig(StrictModel):
    """A login node to submit through over SSH (paramiko); host keys are always verified."""

    host: str
    port: int = Field(22, gt=0, lt=65536)
    user: str | None = None
    key_file: str | None = None  # None: the SSH agent, then ~/.ssh/id_*
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout_s: float = Field(15, gt=0)
    env: EnvMap = Field(default_factory=dict, description="exported before every remote command")


SBATCH_VALUE = r"^[^\n\r\x00]*$"
ExitAction = Literal["done", "stop", "restart", "requeue", "preflight"]
# What the batch script does when the ranks end with an exit code (jobs.contract.exit_codes) or a
# signal: restart inside the allocation (then requeue on the failure budget), requeue (3: on the
# preemption budget), stop, or done. 4 never reaches it: the preflight gate decides that one.
# An exit code not listed is requeued on the failure budget.
DEFAULT_ON_EXIT: dict[str, ExitAction] = {
    "0": "done", "2": "stop", "5": "stop", "7": "stop", "64": "stop", "3": "requeue",
    "1": "restart", "6": "restart", "8": "restart", "signal": "restart", "4": "preflight",
}


class SlurmConfig(StrictModel):
    partition: str | None = Field(None, pattern=SBATCH_VALUE)
    account: str | None = Field(None, pattern=SBATCH_VALUE)
    qos: str | None = Field(None, pattern=SBATCH_VALUE)
    time: str | None = Field("04:00:00", pattern=SBATCH_VALUE)
    exclusive: bool = True
    mem_zero: bool = True  # --mem=0: all of each node's memory
    gpu_flag: Literal["gpus-per-node", "gres"] = "gpus-per-node"
    cpus_per_task: int | None = Field(None, gt=0, description="None: cpus_per_node / tasks per node")
    cpu_bind: str | None = Field("cores", pattern=SBATCH_VALUE)
    signal_lead_s: int = Field(120, ge=0, description="USR2 this long before the time limit")
    requeue: bool = True
    max_preemptions: int = Field(5, ge=0)
    max_failures: int = Field(1, ge=0)
    spare_nodes: int = Field(0, ge=0, description="the job asks for nodes + spare_nodes; a spare takes a failed "
                                                  "node's place in a restart inside the allocation")
    restarts_in_allocation: int = Field(2, ge=0, description="a failed step starts again inside the allocation "
                                                             "this often before the job is requeued")
    on_exit: dict[str, ExitAction] = Field(default_factory=dict, description="exit code (or 'signal') -> done, "
                                           "stop, restart, requeue or preflight, over the default map")
    dependency: str | None = Field(None, pattern=SBATCH_VALUE)
    array: str | None = Field(None, pattern=SBATCH_VALUE, description="repeated runs (MLPerf NEXP), e.g. 1-5%1")
    extra_flags: list[str] = Field(default_factory=list, description="more #SBATCH flags, e.g. --constraint=a100")
    mpi: Literal["none", "pmix", "pmi2"] = "none"
    python: str = "python3"
    workdir: str | None = None  # podrun's checkout on the cluster; None: this one
    setup: list[str] = Field(default_factory=list, description="shell lines before srun (module load, venv)")
    login: LoginConfig | None = None

    @field_validator("on_exit")
    @classmethod
    def _exit_codes(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key != "signal" and not (key.isdigit() and int(key) < 256):
                raise ValueError(f"{key!r}: a key is an exit code (0 to 255) or 'signal' (a death by a signal)")
        return value

    def retry_policy(self) -> dict[str, str]:
        """The default map with the profile's own entries over it (see :data:`DEFAULT_ON_EXIT`)."""
        return DEFAULT_ON_EXIT | {str(int(k)) if k.isdigit() else k: v for k, v in self.on_exit.items()}

    @field_validator("extra_flags")
    @classmethod
    def _one_line_flags(cls, flags: list[str]) -> list[str]:
        for flag in flags:
            if not flag.startswith("-") or any(c in flag for c in "\n\r\x00"):
                raise ValueError(f"{flag!r}: each flag is one line starting with '-', e.g. --constraint=a100")
        return flags


class RayConfig(StrictModel):
    """A Ray cluster: its dashboard (job API), shared storage and fault tolerance."""

    address: str = Field("http://127.0.0.1:8265", description="the dashboard / job API of the head node")
    token_file: str | None = Field(None, description="Ray's auth token (default: ~/.ray/auth_token); never logged")
    storage_path: str | None = Field(None, description="shared storage for Ray Train; None: checkpoint_root")
    max_failures: int = Field(2, ge=0, description="worker-group restarts before the run fails")
    min_workers: int | None = Field(None, gt=0, description="elastic: after a lost node the run goes on with as few "
                                    "as this many workers, keeping the global batch (update_freq); None: fixed")
    resources_per_worker: dict[str, float] = Field(default_factory=dict, description="default: 1 CPU or 1 GPU")
    python: str = "python"
    node_port_base: int | None = Field(None, gt=1024, lt=65000,
                                       description="Ray on Slurm: per-node agent ports from here (shared hosts)")
    object_store_bytes: int | None = Field(None, gt=0)
    gcs_port: int = Field(6379, gt=0, lt=65536, description="Ray on Slurm: the head's port")
    dashboard_port: int = Field(8265, gt=0, lt=65536, description="Ray on Slurm: the head's job API port")
    excludes: list[str] = Field(default_factory=lambda: [".venv", ".git", "data", ".podrun", "mlruns", "mlartifacts",
                                                          "*.pt", "*.sbatch", "__pycache__", ".whl", ".gl"])

class PreflightConfig(PreflightSettings):
    """The node checks before training (``podrun preflight``; :mod:`jobs.preflight`)."""

    enabled: bool | None = Field(None, description="None: on for the slurm and ray backends, off for local")
    exclude_bad: bool = Field(False, description="Slurm: requeue without the failing nodes, at the same size")
    max_requeues: int = Field(3, ge=0, description="preflight requeues of one job before it stops")
class RecipeThroughput(StrictModel):
    """A recipe's measured speed on this profile's GPUs, for `podrun predict` (a bare number is ``per_gpu``)."""

    per_gpu: float = Field(gt=0, description="items/s per GPU (img/s, tok/s), measured on one node")
    batch: int | None = Field(None, gt=0, description="the per-GPU batch it was measured at; None: the recipe's")
    step_floor_ms: float | None = Field(None, ge=0, description="a step's fixed cost; None: 5 on GPUs, 0 on CPUs")
    startup_s: float = Field(0.0, ge=0, description="process start to run_start")
    source: str = Field("", description="where the figure comes from")

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, value: object) -> object:
        return {"per_gpu": value} if isinstance(value, int | float) else value


class ClusterProfile(StrictModel):
    name: str = ""
    description: str = ""
    scheduler: str = Field("local", description="the backend that starts jobs: local, slurm or ray")
    nodes: int = Field(1, gt=0, description="nodes the profile can use")
    gpus_per_node: int | Literal["auto"] = Field(0, description="0 runs on CPU; auto counts them")
    cpus_per_node: int | None = Field(None, gt=0)
    memory: str | None = None
    gpu: str | None = None
    interconnect: InterconnectConfig = Field(default_factory=InterconnectConfig)
    container: ContainerConfig | None = None
    data_root: str = "data"
    checkpoint_root: str = ".podrun/checkpoints"
    state_dir: str | None = Field(None, description="job folders on the cluster (shared); None: $PODRUN_HOME")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    env: EnvMap = Field(default_factory=dict)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    preflight: PreflightConfig = Field(default_factory=PreflightConfig)
    throughput: dict[str, RecipeThroughput] = Field(default_factory=dict, description="per recipe, for predict")

    @field_validator("gpus_per_node")
    @classmethod
    def _non_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 (CPU), a positive count or 'auto'")
        return value

    @field_validator("scheduler")
    @classmethod
    def _scheduler_known(cls, name: str) -> str:
        return check_backend_name(name)

    @model_validator(mode="after")
    def _ib_check_has_hcas(self) -> ClusterProfile:
        if self.preflight.checks and "infiniband" in self.preflight.checks and not self.interconnect.hcas:
            raise ValueError("preflight.checks lists infiniband but interconnect.hcas is empty: "
                             "list the HCAs (e.g. [mlx5_0, mlx5_1]) or drop infiniband from the checks")
        return self


class ClusterFile(StrictModel):
    profiles: dict[str, ClusterProfile]


def cluster_file_path(explicit: str | None = None) -> Path:
    """The cluster file, in podrun's search order (:func:`orchestrator.spec.paths.find_cluster_file`)."""
    return find_cluster_file(explicit).path


def load_profiles(path: Path) -> dict[str, ClusterProfile]:
    """Load every profile of a cluster file.

    Raises:
        ConfigError: the file is missing, malformed or has invalid keys.
    """
    cluster = validate(ClusterFile, read_yaml(path), str(path))
    for name, profile in cluster.profiles.items():
        profile.name = name
    return cluster.profiles


PREFLIGHT_BACKENDS = ("slurm", "ray")  # where preflight is on unless the profile says otherwise


def preflight_spec(profile: ClusterProfile, backend: str, force: bool = False) -> PreflightSpec | None:
    """What the job's nodes check, or None when preflight is off for this profile and backend.

    ``force`` (``podrun preflight``) runs the checks even where the profile turns them off.
    """
    cfg = profile.preflight
    enabled = cfg.enabled if cfg.enabled is not None else backend in PREFLIGHT_BACKENDS
    if not (enabled or force):
        return None
    settings = cfg.model_dump(exclude={"enabled", "exclude_bad", "max_requeues"})
    gpus = profile.gpus_per_node if isinstance(profile.gpus_per_node, int) else 0
    return PreflightSpec(**settings, gpus_per_node=gpus, gpu_model=profile.gpu, hcas=profile.interconnect.hcas)
