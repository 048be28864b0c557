"""What a Ray job carries, shared by the Ray backend and Ray inside a Slurm allocation.

The runtime_env uploads podrun's checkout (without data sets, checkpoints, virtualenvs
or MLflow stores), or an installed podrun's two packages as ``py_modules``, and passes
the launch plan in ``$PODRUN_LAUNCH_PLAN``; the entrypoint is
the driver :mod:`orchestrator.backends.ray_job`. Token authentication (Ray 2.60) reads the
profile's ``ray.token_file``, ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token`` or
``$RAY_AUTH_TOKEN``; the token is sent as a header and never logged.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from orchestrator.spec.jobspec import LaunchPlan, dump_plan
from orchestrator.spec.paths import checkout_root, package_dirs
from orchestrator.spec.profiles import RayConfig

PLAN_ENV = "PODRUN_LAUNCH_PLAN"
DRIVER_MODULE = "orchestrator.backends.ray_job"


def runtime_env(plan: LaunchPlan, env_vars: dict[str, str]) -> dict[str, Any]:
    """The Ray runtime_env: podrun's code (see :func:`code_env`), minus data and checkpoints, the plan,
    and ``env_vars``.

    Ray shows a runtime_env's env_vars in its dashboard: a secret passed this way is
    visible to whoever can open it (prefer the cluster's own secret store).
    """
    return {**code_env(), "excludes": list(plan.profile.ray.excludes),
            "env_vars": {PLAN_ENV: dump_plan(plan), "PYTHONUNBUFFERED": "1", **env_vars}}


def code_env() -> dict[str, Any]:
    """The checkout as ``working_dir``; an installed podrun (site-packages must not be uploaded
    whole) sends its ``jobs`` and ``orchestrator`` packages as ``py_modules`` instead."""
    root = checkout_root()
    if root is not None:
        return {"working_dir": str(root)}
    return {"py_modules": [str(path) for path in package_dirs()]}


def entrypoint(plan: LaunchPlan) -> str:
    return f"{shlex.quote(plan.profile.ray.python)} -m {DRIVER_MODULE}"


def token_path(cfg: RayConfig) -> Path:
    return Path(cfg.token_file or os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser()


def auth_headers(cfg: RayConfig) -> dict[str, str]:
    """The bearer token for a token-authenticated cluster, if there is one."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = token_path(cfg)
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}
