"""The launcher's errors: the rank runtime's (:mod:`jobs.errors`) plus scheduler failures."""

from jobs.errors import CheckpointError, ConfigError, DataError, PodrunError

__all__ = ["BackendError", "CheckpointError", "ConfigError", "DataError", "PodrunError"]


class BackendError(PodrunError):
    """A scheduler is unreachable or refused a request."""
