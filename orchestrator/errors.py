"""The launcher's errors: the rank runtime's (:mod:`jobs.contract.errors`) plus scheduler failures."""

from jobs.contract.errors import CheckpointError, ConfigError, DataError, PodrunError

__all__ = ["BackendError", "CheckpointError", "ConfigError", "DataError", "PodrunError"]


class BackendError(PodrunError):
    """A scheduler is unreachable or refused a request."""
