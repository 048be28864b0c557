"""Where a job's MLflow record goes, and the ``podrun`` command line that reproduces the job.

The store is the one the user's MLflow UI reads, whatever backend runs the ranks:

1. ``$MLFLOW_TRACKING_URI`` of the launcher (a tracking server, typically);
2. the profile's ``mlflow.tracking_uri``;
3. ``sqlite:///<state_dir>/mlflow.db``: the profile's shared ``state_dir``, else the
   launcher's ``$PODRUN_HOME`` (``./.podrun``), always as an absolute path.

A relative path is made absolute here, on the launcher: a rank (or a Ray job's driver,
which runs in Ray's temporary copy of the working directory) has another working
directory, so a relative store would be a file that no UI reads. A job on several nodes
with neither a store nor a shared ``state_dir`` stops before training (:func:`tracking_uri`).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from jobs.contract.secret_filter import known_secret_values, mask_text, secret_reason
from jobs.tracking.store_uri import SQLITE_PREFIX, absolute_store_uri, display_uri, local_store_path
from orchestrator.errors import ConfigError
from orchestrator.spec.jobspec import LaunchPlan
from orchestrator.spec.profiles import ClusterProfile

REDACTED = "<redacted>"


def tracking_uri(profile: ClusterProfile, state_dir: Path, nodes: int) -> str:
    """The job's MLflow tracking URI (see the module docstring for the order).

    ``state_dir`` is the job's state folder: the profile's (shared) ``state_dir``, or the
    launcher's podrun home when the profile has none.

    Raises:
        ConfigError: the job spans several nodes and nothing names a store that they and
            the user's UI share.
    """
    named = os.environ.get("MLFLOW_TRACKING_URI") or profile.mlflow.tracking_uri
    if named:
        return named if profile.slurm.login is not None else absolute_store_uri(named)
    if profile.state_dir is None and nodes > 1:
        raise ConfigError(
            f"profile '{profile.name}': a {nodes}-node job needs an MLflow store every node and your UI can reach: "
            "set MLFLOW_TRACKING_URI=http://HOST:5000 (a tracking server), or the profile's mlflow.tracking_uri, "
            "or its state_dir on shared storage (--set profile.state_dir=/shared/podrun)")
    return f"{SQLITE_PREFIX}{state_dir / 'mlflow.db'}"


def check_outlives(plan: LaunchPlan, workdir: Path) -> None:
    """Refuse a job whose MLflow store or job folder would be inside ``workdir`` (Ray's temporary copy).

    Raises:
        ConfigError: with the one line that says how to name a lasting store.
    """
    workdir = workdir.resolve()
    store = local_store_path(plan.job.tracking_uri)
    for what, path in (("MLflow store", store), ("job folder", Path(plan.job.job_dir))):
        if path is not None and (path.resolve() == workdir or workdir in path.resolve().parents):
            raise ConfigError(
                f"the {what} {path} would be inside this Ray job's temporary working directory, which Ray "
                "deletes: set the profile's state_dir (shared storage; --set profile.state_dir=/shared/podrun) "
                "or MLFLOW_TRACKING_URI (a tracking server; pass it in --runtime-env-json env_vars)")


def announce(plan: LaunchPlan) -> str:
    """The line the launcher prints at the start: where the run's record goes."""
    return f"MLflow: {display_uri(plan.job.tracking_uri)} (experiment {plan.job.experiment})"


def reproduce_command(ref: str, assignments: list[str], *, cluster_file: str | None = None,
                      backend: str | None = None) -> str:
    """``podrun launch ...`` for the job, with any secret-looking ``--set`` value replaced by ``<redacted>``."""
    argv, secrets = ["podrun", "launch", ref], known_secret_values()
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        safe = not sep or secret_reason(key, value, secrets) is None
        argv += ["--set", mask_text(assignment, secrets) if safe else f"{key}={REDACTED}"]  # a secret inside, too
    if cluster_file:
        argv += ["--cluster-file", cluster_file]
    if backend:
        argv += ["--backend", backend]
    return shlex.join(argv)
