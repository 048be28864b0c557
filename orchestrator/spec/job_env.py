"""The job's environment variables: ``${VAR}`` references kept, secrets handed over by reference.

A profile's env entries (``env``, ``interconnect.env``, ``--set profile.env.X=...``) reach
every rank as environment variables. Everything podrun writes (the rendered script,
``launch.yaml``, the job record, MLflow artifacts) holds them as written, ``${VAR}``
references included, and the script expands them at run time from the environment it is
submitted with (``sbatch`` passes the submitter's environment to the job by default).

A literal value that is a secret (by :func:`jobs.contract.secret_filter.secret_reason`: its name or
its value looks secret) and the password of the MLflow URI are written as a reference to a
variable of their own name (``DB_PASSWORD: ${DB_PASSWORD}``). podrun keeps the value in
memory (``LaunchPlan.secret_env``) and gives it to the process that submits the job, in its
environment: the local supervisor, ``sbatch`` here or through the SSH channel, or Ray's
runtime_env (which the Ray dashboard shows). No file and no command line holds it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

from jobs.contract.config_io import check_env_name, env_references, expand_string, split_references
from jobs.contract.secret_filter import known_secret_values, secret_reason, split_credentials
from orchestrator.errors import ConfigError
from orchestrator.spec.jobspec import LaunchPlan
from orchestrator.spec.profiles import ClusterProfile


def reference(name: str) -> str:
    return "${" + name + "}"


def profile_env(plan: LaunchPlan) -> dict[str, str]:
    """Every env entry of the plan's profile, as written: ``interconnect.env``, then ``env``."""
    return plan.profile.interconnect.env | plan.profile.env


def detach_secrets(profile: ClusterProfile, uri: str) -> tuple[ClusterProfile, str, dict[str, str]]:
    """The profile and tracking URI as podrun may write them, and the secret values held back.

    Literal secrets in ``env`` and ``interconnect.env`` become ``${NAME}``; the MLflow URI
    loses its ``user:password@``, which becomes ``MLFLOW_TRACKING_USERNAME`` and
    ``${MLFLOW_TRACKING_PASSWORD}`` in ``env`` (MLflow's client reads both).
    """
    profile = profile.model_copy(deep=True)
    uri, credentials = split_credentials(uri)
    if profile.mlflow.tracking_uri:
        profile.mlflow.tracking_uri = split_credentials(profile.mlflow.tracking_uri)[0]
    known, secrets = known_secret_values(), {}
    for env in (profile.interconnect.env, profile.env):
        if env is profile.env:
            env.update(credentials)
        for key, value in env.items():
            shell_word(value, key)  # a default the script could not quote fails here, naming its key
            if _is_literal_secret(key, value, known):
                secrets[key] = expand_string(value, os.environ)
                env[key] = reference(key)
    return profile, uri, secrets


def _is_literal_secret(key: str, value: str, known: frozenset[str]) -> bool:
    refs = env_references(value)
    bare_reference = len(refs) == 1 and value == reference(refs[0][0])  # ${VAR}: the value stays where it is
    return not bare_reference and secret_reason(key, value, known) is not None


def expected_variables(env: Mapping[str, str]) -> list[str]:
    """The variables a script with this env block reads from the environment it is submitted with."""
    names: list[str] = []
    for value in env.values():
        names += [name for name, _ in env_references(value) if name not in names]
    return names


SUBMITTER = "from the environment it is submitted with (never written here)"


def expected_comment(env: Mapping[str, str], where: str = SUBMITTER) -> list[str]:
    """The script's comment line naming the variables it reads (none when it reads none)."""
    names = expected_variables(env)
    return [f"# It reads {', '.join(names)} {where}."] if names else []


def expected_message(plan: LaunchPlan) -> str:
    """What ``podrun render`` says about the variables its script reads ("" when none)."""
    names = expected_variables(profile_env(plan))
    if not names:
        return ""
    message = f"the script reads {', '.join(names)} from the environment it is submitted with"
    if plan.secret_env:
        message += (f"; podrun launch passes them, and to run it yourself export {', '.join(plan.secret_env)} "
                    "too (podrun kept their secret values out of it)")
    return message


def submission_environment(plan: LaunchPlan) -> dict[str, str]:
    """What the submitting process needs in its environment: the referenced variables set here, and the secrets."""
    found = {name: os.environ[name] for name in expected_variables(profile_env(plan)) if name in os.environ}
    return found | plan.secret_env


def check_submission_environment(plan: LaunchPlan) -> None:
    """Refuse to submit a job whose env block reads a variable that is not set (and has no default).

    Raises:
        ConfigError: names the entry, the variable and the fix.
    """
    for key, value in profile_env(plan).items():
        for name, default in env_references(value):
            if default is None and name not in os.environ and name not in plan.secret_env:
                raise ConfigError(f"profile env {key} reads ${{{name}}}, which is not set here: export {name}=... "
                                  f"before podrun launch, or write ${{{name}:-default}}")


def expand_values(env: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """``env`` with its references expanded from ``environ`` (what the ranks finally see)."""
    return {key: expand_string(value, environ) for key, value in env.items()}


def env_key(name: str) -> str:
    """``name`` for ``export NAME=...`` in a script or an SSH command; refused unless it is a variable name.

    Profiles refuse such names where they are read; this check stands where a name meets a
    shell, so that a field added later cannot slip a command through.

    Raises:
        ConfigError: ``name`` is not ``[A-Za-z_][A-Za-z0-9_]*``.
    """
    try:
        return check_env_name(name)
    except ValueError as exc:
        raise ConfigError(f"environment: {exc}") from None


def shell_word(value: str, key: str = "") -> str:
    """``value`` as one shell word whose ``${VAR}`` / ``${VAR:-default}`` expand when the script runs.

    Raises:
        ConfigError: a default holds a quote, ``\\``, ``$`` or a backquote (bash cannot
            quote those inside ``${...}`` reliably).
    """
    pieces = split_references(value)
    if all(match is None for _, match in pieces):
        return shlex.quote(value)
    word = ""
    for text, match in pieces:
        if match is None:
            word += "".join("\\" + c if c in '\\"$`' else c for c in text)
            continue
        if any(c in (match.group(2) or "") for c in "'\"\\$`"):
            raise ConfigError(f"profile env {key or value!r}: the default in {text} may not hold quotes, '\\', "
                              f"'$' or '`': set {match.group(1)} in the environment instead")
        word += text
    return f'"{word}"'
