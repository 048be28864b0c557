"""The launcher's MLflow client (phases, predict, sweep, report): quiet, and quick to give up.

MLflow is imported here on first use only, so ``podrun --help|render|runs|status`` stay light.
"""

from __future__ import annotations

import logging
from typing import Any

REQUEST_TIMEOUT_S = 10


def tracking_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` for ``tracking_uri``: one attempt per request (no minutes of retries), no INFO chatter."""
    from jobs.tracking.mlflow_errors import limit_http_retries
    from jobs.tracking.mlflow_send import new_client

    limit_http_retries(REQUEST_TIMEOUT_S)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return new_client(tracking_uri)
