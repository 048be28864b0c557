"""MLflow's error rules: which failures to send again later, and a short line for a warning.

Shared by the sender's dispatch (:mod:`jobs.tracking.mlflow_send`) and the record kinds it
calls (:mod:`jobs.tracking.model_registry`). MLflow is imported inside the functions.
"""

from __future__ import annotations

import os
import re

# MLflow answered and refused the request itself: sending it again cannot help. Anything
# else (no answer, timeouts, 5xx, 401/403, a proxy's bare 404) keeps the record for later.
PERMANENT_ERROR_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
})  # fmt: skip


def limit_http_retries(timeout_s: int) -> None:
    """Make an unreachable server cost one attempt of ``timeout_s``: the spool retries."""
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
    os.environ[MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.name] = "1"
    os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name] = str(max(1, int(timeout_s)))


def is_permanent(exc: BaseException) -> bool:
    """True if MLflow rejected the request (bad value, changed param, deleted run)."""
    return getattr(exc, "error_code", None) in PERMANENT_ERROR_CODES


def is_transient(exc: BaseException) -> bool:
    """True if sending again later may succeed: no answer, a timeout, or an MLflow error that is not permanent."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    if isinstance(exc, OSError | RequestException):
        return True
    return isinstance(exc, MlflowException) and not is_permanent(exc)


def describe(exc: BaseException) -> str:
    """One short line for a warning."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}"


# What re-running a half-applied schema change on sqlite says: a process was killed while MLflow created or
# upgraded the store's tables (its DDL is not transactional there), and each later opening fails the same way.
INTERRUPTED_SET_UP = re.compile(r"OperationalError\)? ?(table (\w+) already exists|duplicate column name: \w+"
                                r"|index \w+ already exists)")


def retry_advice(error: str | None) -> str:
    """What to do after a failed send: retry later, or (a store whose set-up was interrupted) repair it first."""
    match = INTERRUPTED_SET_UP.search(error or "")
    if match is None:
        return "run `podrun sync` again when it is reachable"
    leftover = match.group(2) or ""
    drop = f" (drop the leftover table {leftover} with sqlite3)" if leftover.startswith("_alembic_tmp_") else ""
    return ("retrying will not help: a process was killed while MLflow created or upgraded this store's tables, "
            "and setting them up again fails; if the store holds no runs yet, delete it and run `podrun sync` "
            f"again; else restore it from a backup or repair it by hand{drop}")
