"""Configuration: cluster profiles, recipes and job specs, validated with pydantic.

Three kinds of YAML file feed a run:

* ``cluster.yaml`` holds named cluster profiles (``local``, ``dgx2``, ``superpod``).
* ``recipes/<name>.yaml`` holds a recipe's hyperparameters and named presets.
* a job spec names a recipe, a preset, a cluster profile, a scale and overrides.

Every model forbids unknown keys. :func:`load_job` merges the three into a
:class:`ResolvedJob`, the one document every rank reads. Any problem raises
:class:`ConfigError` whose message is one line naming the file, the key path and what
was expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from typing import Annotated

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from orchestrator.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class StrictModel(BaseModel):
    """A model that rejects unknown keys and re-validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- cluster


class ContainerConfig(StrictModel):
    image: str | None = None
    mounts: list[str] = Field(default_factory=list)
    workdir: str | None = None
    mount_home: bool = False


class InterconnectConfig(StrictModel):
    """InfiniBand HCAs and the NCCL/UCX environment that goes with them."""

    hcas: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


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
    env: dict[str, str] = Field(default_factory=dict, description="exported before every remote command")


SBATCH_VALUE = r"^[^\n\r\x00]*$"


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
    dependency: str | None = Field(None, pattern=SBATCH_VALUE)
    array: str | None = Field(None, pattern=SBATCH_VALUE, description="repeated runs (MLPerf NEXP), e.g. 1-5%1")
    extra_flags: list[str] = Field(default_factory=list, description="more #SBATCH flags, e.g. --constraint=a100")
    mpi: Literal["none", "pmix", "pmi2"] = "none"
    python: str = "python3"
    workdir: str | None = None  # podrun's checkout on the cluster; None: this one
    setup: list[str] = Field(default_factory=list, description="shell lines before srun (module load, venv)")
    login: LoginConfig | None = None

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
    resources_per_worker: dict[str, float] = Field(default_factory=dict, description="default: 1 CPU or 1 GPU")
    python: str = "python"
    node_port_base: int | None = Field(None, gt=1024, lt=65000,
                                       description="Ray on Slurm: per-node agent ports from here (nodes sharing a host)")
    object_store_bytes: int | None = Field(None, gt=0)
    gcs_port: int = Field(6379, gt=0, lt=65536, description="Ray on Slurm: the head's port")
    dashboard_port: int = Field(8265, gt=0, lt=65536, description="Ray on Slurm: the head's job API port")
    excludes: list[str] = Field(default_factory=lambda: [".venv", ".git", "data", ".podrun", "mlruns", "mlartifacts",
                                                          "*.pt", "*.sbatch", "__pycache__", ".whl", ".gl"])


class ClusterProfile(StrictModel):
    name: str = ""
    description: str = ""
    scheduler: Literal["local", "slurm", "ray"] = "local"
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
    env: dict[str, str] = Field(default_factory=dict)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("gpus_per_node")
    @classmethod
    def _non_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 (CPU), a positive count or 'auto'")
        return value


class ClusterFile(StrictModel):
    profiles: dict[str, ClusterProfile]


# --------------------------------------------------------------------------- recipe


def _tagged(field: str, default: str):
    """A discriminator that reads ``field`` and falls back to ``default`` (recipes may omit it)."""

    def pick(value: Any) -> str:
        if isinstance(value, dict):
            return value.get(field, default)
        return getattr(value, field, default)

    return Discriminator(pick)


class ModelConfig(StrictModel):
    """ResNet v1.5 (``arch: resnet``)."""

    arch: Literal["resnet"] = "resnet"
    layers: list[int] = Field(default_factory=lambda: [3, 4, 6, 3], min_length=1, max_length=4)
    width: int = Field(64, gt=0)
    num_classes: int = Field(1000, gt=1)
    small_stem: bool = False  # 3x3 stem without max-pool, for small images
    zero_init_residual: bool = True


class TransformerConfig(StrictModel):
    """Transformer encoder-decoder (``arch: transformer``); defaults are Transformer-big."""

    arch: Literal["transformer"]
    d_model: int = Field(1024, gt=0)
    ffn_dim: int = Field(4096, gt=0)
    heads: int = Field(16, gt=0)
    encoder_layers: int = Field(6, gt=0)
    decoder_layers: int = Field(6, gt=0)
    dropout: float = Field(0.3, ge=0, lt=1)
    attention_dropout: float = Field(0.1, ge=0, lt=1)
    activation_dropout: float = Field(0.1, ge=0, lt=1)
    norm: Literal["pre", "post"] = "pre"
    share_embeddings: bool = True
    max_positions: int = Field(1024, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> "TransformerConfig":
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must divide by heads {self.heads}")
        return self


ModelSpec = Annotated[
    Annotated[ModelConfig, Tag("resnet")] | Annotated[TransformerConfig, Tag("transformer")],
    _tagged("arch", "resnet"),
]


class TokenizerConfig(StrictModel):
    model: str | None = Field(None, description="a sentencepiece .model; None: train one into the data folder")
    vocab_size: int = Field(33708, gt=8)
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = Field(1.0, gt=0, le=1)


class TextDataConfig(StrictModel):
    """Parallel text (``kind: parallel_text``): ``train.en``/``train.de`` or ``train.tsv``, plus valid/test."""

    kind: Literal["parallel_text"]
    dataset: str = "wmt14_en_de"  # folder under the profile's data_root, or an absolute path
    source_lang: str = "en"
    target_lang: str = "de"
    format: Literal["pair", "tsv"] = "pair"
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    max_tokens: int = Field(5120, gt=0, description="tokens per batch per rank")
    max_len: int = Field(256, gt=0, description="longer pairs are skipped in training")
    workers: int = Field(1, ge=0)


class DataConfig(StrictModel):
    """Images in ImageNet folder layout (``kind: images``)."""

    kind: Literal["images"] = "images"
    dataset: str = "imagenet"  # folder under the profile's data_root, or an absolute path
    backend: Literal["dali", "torch", "synthetic"] = "dali"
    dali_device: Literal["auto", "cpu", "gpu"] = "auto"
    image_size: int = Field(224, gt=0)
    val_resize: int = Field(256, gt=0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    flip: bool = True
    mean: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    std: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)
    workers: int = Field(4, gt=0, description="DALI threads or DataLoader workers per rank")
    synthetic_samples: int = Field(2048, gt=0, description="samples per epoch in synthetic mode")


DataSpec = Annotated[
    Annotated[DataConfig, Tag("images")] | Annotated[TextDataConfig, Tag("parallel_text")],
    _tagged("kind", "images"),
]


class OptimConfig(StrictModel):
    name: Literal["sgd", "lars", "adam", "auto"] = "auto"  # auto: LARS above lars_above_batch
    lars_above_batch: int = Field(8192, gt=0)
    lr_per_256: float = Field(0.256, gt=0)
    base_lr: float | None = Field(None, gt=0, description="pins the LR instead of scaling it")
    end_lr: float = Field(0.0001, ge=0)
    momentum: float = Field(0.875, ge=0, lt=1)
    weight_decay: float = Field(5e-05, ge=0)
    nesterov: bool = False
    lars_eta: float = Field(0.001, gt=0)
    bn_bias_weight_decay: bool = False
    betas: tuple[float, float] = (0.9, 0.98)  # Adam
    eps: float = Field(1e-9, gt=0)  # Adam


class ScheduleConfig(StrictModel):
    warmup_epochs: float | None = Field(None, ge=0, description="None: derived from the batch")
    warmup_steps: int | None = Field(None, ge=0, description="warmup in optimizer steps; wins over epochs")
    decay: Literal["cosine", "poly", "inverse_sqrt"] = "poly"
    poly_power: float = Field(2.0, gt=0)


class TrainConfig(StrictModel):
    batch_size: int = Field(256, gt=0, description="per rank")
    global_batch_size: int | None = Field(None, gt=0, description="pins it; must divide by ranks")
    epochs: int = Field(40, gt=0)
    update_freq: int = Field(1, gt=0, description="micro-batches per optimizer step (gradient accumulation)")
    tokens_per_update: int | None = Field(None, gt=0, description="keeps the effective batch: derives update_freq")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    precision: Literal["fp32", "tf32", "amp-bf16", "amp-fp16"] = "amp-bf16"
    channels_last: bool = True
    compile: bool = False
    seed: int = 1
    log_every: int = Field(20, gt=0, description="steps between progress lines and metrics")
    checkpoint_every: int = Field(1, ge=0, description="epochs between checkpoints; 0 disables")
    keep_checkpoints: int = Field(2, gt=0)
    cpu_threads: int | None = Field(None, gt=0, description="torch threads per rank on CPU")


class EvalConfig(StrictModel):
    every_epochs: int = Field(1, gt=0)
    start_epoch: int = Field(0, ge=0, description="first epoch (0-based) that is evaluated")
    batch_size: int | None = Field(None, gt=0)
    target: float = Field(0.759, gt=0, description="top-1 in (0, 1], or BLEU")
    beam_size: int = Field(1, gt=0, description="translation: 1 is greedy")
    max_len_a: float = Field(1.2, ge=0, description="translation: decode at most a * source length + b")
    max_len_b: int = Field(10, ge=0)
    bleu_lowercase: bool = False
    bleu_tokenize: str = "13a"


class MlperfConfig(StrictModel):
    benchmark: str = "resnet"
    ruleset: str = "3.1.0"
    division: Literal["closed", "open"] = "closed"
    org: str = "podrun"
    status: Literal["cloud", "onprem", "preview", "research"] = "research"


class Recipe(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    model: ModelSpec = Field(default_factory=ModelConfig)
    data: DataSpec = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    mlperf: MlperfConfig = Field(default_factory=MlperfConfig)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        images = self.model.arch == "resnet"
        if images != (self.data.kind == "images"):
            raise ValueError(f"model.arch {self.model.arch} does not go with data.kind {self.data.kind}")
        if images and self.eval.target > 1:
            raise ValueError(f"eval.target {self.eval.target}: top-1 accuracy is at most 1")
        return self


# --------------------------------------------------------------------------- job


class HorovodConfig(StrictModel):
    """Horovod's knobs (used with ``comm: horovod``); applied before ``hvd.init()``."""

    fp16_compression: bool = False
    fusion_threshold_mb: int = Field(64, ge=0)
    cycle_time_ms: float = Field(1.0, gt=0)
    hierarchical_allreduce: bool = False
    timeline: bool = Field(False, description="write HOROVOD_TIMELINE; it becomes an MLflow artifact")


class JobSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    recipe: str
    preset: str | None = None
    cluster: str = "local"
    backend: Literal["local", "slurm", "ray"] | None = None  # None: the profile's scheduler
    nodes: int = Field(1, gt=0)
    tasks_per_node: int | None = Field(None, gt=0, description="None: one per GPU, or 1 on CPU")
    comm: Literal["ddp", "horovod"] = "ddp"
    horovod: HorovodConfig = Field(default_factory=HorovodConfig)
    overrides: dict[str, Any] = Field(default_factory=dict)


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


UNION_TAGS: dict[str, type[BaseModel]] = {
    "resnet": ModelConfig, "transformer": TransformerConfig, "images": DataConfig, "parallel_text": TextDataConfig,
}


class ResolvedJob(StrictModel):
    """Everything a rank needs, written once by the launcher as ``config.resolved.yaml``."""

    job: JobSpec
    recipe: Recipe
    profile: ClusterProfile
    backend: Literal["local", "slurm", "ray"]
    job_id: str
    tasks_per_node: int
    world_size: int
    device: Literal["cpu", "cuda"]
    derived: Derivation
    data_dir: str
    checkpoint_dir: str
    job_dir: str
    tracking_uri: str
    git_sha: str = "unknown"


# --------------------------------------------------------------------------- loading


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Raises:
        ConfigError: the file is missing, is not valid YAML or is not a mapping.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return expand_env(data)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML document."""
    if isinstance(value, dict):
        return {key: expand_env(item) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item) for item in value]
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    return value


def validate(model: type[BaseModel], data: Any, source: str, prefix: str = "") -> Any:
    """Validate ``data`` against ``model``; raise a one-line :class:`ConfigError` if it fails."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, model, source, prefix)) from None


def describe_validation_error(
    exc: ValidationError, model: type[BaseModel], source: str, prefix: str = ""
) -> str:
    """Turn pydantic's errors into one line: file, key path, what was expected."""
    errors = exc.errors()
    first = errors[0]
    raw_loc = [str(part) for part in first["loc"]]
    loc = [part for part in raw_loc if part not in UNION_TAGS]
    path = ".".join(([prefix] if prefix else []) + loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        valid = ", ".join(sorted(valid_keys(model, raw_loc[:-1])))
        message = f"unknown key '{path}'; valid keys here: {valid}"
    elif first["type"] == "missing":
        message = f"missing required key '{path}'"
    else:
        got = first.get("input")
        shown = f" (got {got!r})" if not isinstance(got, (dict, list)) and len(repr(got)) < 80 else ""
        where = "" if path == "(top level)" else f"{path}: "
        message = f"{where}{first['msg'].removeprefix('Value error, ').rstrip('.')}{shown}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{source}: {message}{more}"


def valid_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names valid at ``loc`` inside ``model`` (dict keys are skipped)."""
    current: Any = model
    for part in loc:
        if part in UNION_TAGS:
            current = UNION_TAGS[part]
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            break
        if part in fields:
            current = _model_in(fields[part].annotation)
        # a free-form key of a dict (a profile or preset name): stay on the value type
        elif current is ClusterFile:
            current = ClusterProfile
    return list(getattr(current, "model_fields", {}).keys())


def _model_in(annotation: Any) -> Any:
    """Find the BaseModel inside an annotation such as ``X | None`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``update`` merged in; nested mappings merge key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` inside nested dicts, creating levels as needed."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_set(assignment: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as YAML (``3``, ``true``, ``[1,2]``).

    Raises:
        ConfigError: the assignment has no ``=`` or an empty key.
    """
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, for example --set train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value
