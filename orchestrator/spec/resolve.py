"""Resolve a job: find and merge the job spec, recipe, preset, profile and overrides.

``load_job`` is the one place where the three kinds of file meet. Its result is a
:class:`LaunchPlan`; its ``job`` (a :class:`jobs.contract.job.ResolvedJob`) is written next to the
job's logs and is all a rank reads.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

from jobs.contract.checkpoint_index import latest_checkpoint, latest_valid_checkpoint
from jobs.contract.config_io import deep_merge, expand_env, parse_set, read_yaml, set_dotted, validate
from jobs.contract.job import ResolvedJob
from jobs.contract.modes import mode_problem
from jobs.contract.recipe import Recipe
from orchestrator.errors import CheckpointError, ConfigError
from orchestrator.spec.job_env import detach_secrets
from orchestrator.spec.jobspec import JobSpec, LaunchPlan
from orchestrator.spec.paths import checkout_root, find_cluster_file, find_job_spec, find_recipe, podrun_home
from orchestrator.spec.profiles import ClusterProfile, load_profiles, preflight_spec
from orchestrator.spec.run_record import reproduce_command, tracking_uri
from orchestrator.spec.scaling import derive

JOB_FIELDS = set(JobSpec.model_fields) - {"overrides"}


def recipe_path(name: str) -> Path:
    """The recipe file, in podrun's search order (:func:`orchestrator.spec.paths.find_recipe`)."""
    return find_recipe(name).path


def load_recipe(name: str, preset: str | None, overrides: dict[str, Any],
                sources: dict[str, str] | None = None) -> Recipe:
    """Load a recipe, apply a preset then the dotted ``overrides``; note the file in ``sources``.

    Raises:
        ConfigError: unknown recipe or preset, or an invalid merged recipe.
    """
    found = find_recipe(name)
    path = found.path
    if sources is not None:
        sources["recipe"] = str(found)
    raw = read_yaml(path)
    source = str(path)
    validate(Recipe, raw, source)  # report errors in the file itself first
    if preset:
        presets = raw.get("presets") or {}
        if preset not in presets:
            raise ConfigError(f"{path}: no preset '{preset}'; presets: {', '.join(sorted(presets)) or 'none'}")
        raw = deep_merge(raw, presets[preset])
        source += f" (preset {preset})"
    if overrides:
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        source += " with overrides"
    return validate(Recipe, raw, source)


def load_job_spec(ref: str, assignments: list[str],
                  sources: dict[str, str] | None = None) -> tuple[JobSpec, dict[str, Any], dict[str, Any]]:
    """Read a job spec file (searched as :func:`orchestrator.spec.paths.find_job_spec` says), or build
    one from ``RECIPE[:PRESET]``, then apply ``--set``; note the file in ``sources``.

    Returns the spec, the recipe overrides and the profile overrides.

    Raises:
        ConfigError: the file is invalid or an assignment is malformed.
    """
    found = find_job_spec(ref)
    path = found.path if found else Path(ref)
    if found and sources is not None:
        sources["job spec"] = str(found)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        raw, source = read_yaml(path), str(path)
    else:
        recipe, _, preset = ref.partition(":")
        raw = {"name": recipe + (f"-{preset}" if preset else ""), "recipe": recipe, "preset": preset or None}
        source = f"job '{ref}'"
    raw = dict(raw)
    recipe_overrides = dict(raw.pop("overrides", None) or {})
    profile_overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, value = parse_set(assignment)
        head = key.split(".", 1)[0]
        if head in JOB_FIELDS:
            set_dotted(raw, key, value)
        elif head == "profile":
            set_dotted(profile_overrides, key.split(".", 1)[1], value)
        else:
            recipe_overrides[key] = value
    spec = validate(JobSpec, raw, source)
    return spec, recipe_overrides, profile_overrides


def new_job_id(name: str) -> str:
    """A sortable, unique id for a local job: ``<name>-<UTC time>-<4 hex>``."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def git_sha() -> str:
    """The commit of the podrun checkout, with ``-dirty`` when it has local changes."""
    root = checkout_root()  # an installed podrun has no checkout (git would report an enclosing repo)
    if root is None:
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_job(
    ref: str,
    assignments: list[str] | None = None,
    *,
    cluster_file: str | None = None,
    backend: str | None = None,
    job_id: str | None = None,
    resume: str | None = None,
) -> LaunchPlan:
    """Resolve a job reference (a job spec file or ``RECIPE[:PRESET]``) into a :class:`LaunchPlan`.

    ``resume`` is ``"latest"`` or a previous job id: the new job continues that job's
    checkpoints and MLflow run.

    Raises:
        ConfigError: any file is invalid, the profile is unknown or the scale is impossible.
    """
    sources: dict[str, str] = {}
    spec, recipe_overrides, profile_overrides = load_job_spec(ref, assignments or [], sources)
    if backend:
        spec.backend = backend
    profile = _load_profile(spec.cluster, cluster_file, profile_overrides, sources)
    recipe = load_recipe(spec.recipe, spec.preset, recipe_overrides, sources)
    chosen_backend = spec.backend or profile.scheduler
    tasks = _tasks_per_node(spec, profile, chosen_backend)
    world = spec.nodes * tasks
    state_dir = _absolute(profile, profile.state_dir) if profile.state_dir else podrun_home()
    profile, uri, secret_env = detach_secrets(profile, tracking_uri(profile, state_dir, spec.nodes))
    derived = derive(recipe, world)
    device = "cuda" if _gpus(profile, chosen_backend) else "cpu"
    problem = mode_problem(recipe.train.precision, recipe.train.compile, device, gpu=profile.gpu,
                           check_compiler=chosen_backend == "local")
    if problem:
        raise ConfigError(f"job '{spec.name}' on profile '{profile.name}' ({device}): {problem}")
    job_id = job_id or new_job_id(spec.name)
    checkpoint_dir = _checkpoint_dir(profile, spec.name, job_id, resume)
    job = ResolvedJob(
        job_id=job_id,
        name=spec.name,
        recipe=recipe,
        preset=spec.preset,
        cluster=profile.name,
        backend=chosen_backend,
        nodes=spec.nodes,
        tasks_per_node=tasks,
        world_size=world,
        device=device,
        comm=spec.comm,
        horovod=spec.horovod,
        derived=derived,
        data_dir=str(_absolute(profile, profile.data_root) / getattr(recipe.data, "dataset", recipe.name)),
        checkpoint_dir=str(checkpoint_dir),
        job_dir=str(state_dir / "jobs" / job_id),
        tracking_uri=uri,
        experiment=profile.mlflow.experiment or recipe.name,
        git_sha=git_sha(),
        preflight=preflight_spec(profile, chosen_backend),
        watchdog_timeout_s=spec.watchdog_timeout_s,
        straggler=spec.straggler,
        registry=spec.registry,
        system_metrics_interval_s=spec.system_metrics_interval_s,
        command=reproduce_command(ref, assignments or [], cluster_file=cluster_file, backend=backend),
    )
    plan = LaunchPlan(spec=spec, profile=profile, job=job, sources=sources)
    plan.secret_env.update(secret_env)
    return plan


def _load_profile(name: str, cluster_file: str | None, overrides: dict[str, Any],
                  sources: dict[str, str]) -> ClusterProfile:
    found = find_cluster_file(cluster_file)
    sources["cluster file"] = str(found)
    path = found.path
    profiles = load_profiles(path)
    if name not in profiles:
        raise ConfigError(f"{path}: no cluster profile '{name}'; profiles: {', '.join(sorted(profiles))}")
    if not overrides:
        return profiles[name]
    merged = deep_merge(profiles[name].model_dump(), expand_env(overrides))  # as in cluster.yaml
    return validate(ClusterProfile, merged, f"{path} (profile {name} with --set profile.*)")


def _gpus(profile: ClusterProfile, backend: str) -> int:
    if profile.gpus_per_node != "auto":
        return profile.gpus_per_node
    if backend != "local":
        raise ConfigError(f"profile '{profile.name}': gpus_per_node: auto only works with the local backend; "
                          "set a count")
    return visible_gpus()


def visible_gpus() -> int:
    """GPUs this machine's ranks would see, without importing torch (seconds at every launch).

    ``CUDA_VISIBLE_DEVICES`` when set, else the driver's device files (``/dev/nvidia0``, ...).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([p for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit()])


def _tasks_per_node(spec: JobSpec, profile: ClusterProfile, backend: str) -> int:
    if spec.nodes > profile.nodes:
        raise ConfigError(
            f"job '{spec.name}' asks for {spec.nodes} nodes but profile '{profile.name}' has {profile.nodes}: "
            f"use --set nodes={profile.nodes} or a larger profile"
        )
    if backend == "local" and spec.nodes != 1:
        raise ConfigError("the local backend runs on this machine only: use --set nodes=1, or --backend slurm|ray")
    gpus = _gpus(profile, backend)
    tasks = spec.tasks_per_node or gpus or 1
    if gpus and tasks > gpus:
        raise ConfigError(
            f"job '{spec.name}' asks for {tasks} tasks per node but profile '{profile.name}' has {gpus} GPUs per node"
        )
    return tasks


def _absolute(profile: ClusterProfile, path: str) -> Path:
    """A local path made absolute; a path on a remote cluster (a login host) is left as written."""
    if profile.slurm.login is not None:
        return Path(path)
    return Path(path).expanduser().resolve()


def _checkpoint_dir(profile: ClusterProfile, name: str, job_id: str, resume: str | None) -> Path:
    root = _absolute(profile, profile.checkpoint_root) / name
    if resume is None:
        return root / job_id
    if resume != "latest":
        if not (root / resume).is_dir():
            raise ConfigError(f"--resume {resume}: no checkpoints at {root / resume}")
        return _resumable(root / resume)
    candidates = sorted((d for d in root.glob("*") if d.is_dir() and latest_checkpoint(d)),
                        key=lambda d: d.stat().st_mtime)
    if not candidates:
        raise ConfigError(f"--resume: no complete checkpoint under {root}; run without --resume to start fresh")
    return _resumable(candidates[-1])


def _resumable(folder: Path) -> Path:
    """``folder``, checked to hold a checkpoint that matches its checksum (when it holds any).

    Raises:
        CheckpointError: it holds checkpoints, but every one is truncated or damaged.
    """
    skipped: list[str] = []
    if latest_checkpoint(folder) and latest_valid_checkpoint(folder, skipped) is None:
        raise CheckpointError(f"--resume: no valid checkpoint in {folder}: {'; '.join(skipped)}; restore one "
                              "from a copy, or run without --resume to start afresh")
    return folder
