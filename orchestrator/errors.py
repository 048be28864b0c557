"""Errors that the CLI shows as one line, without a traceback."""


class PodrunError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(PodrunError):
    """A cluster profile, recipe, job spec or override is invalid."""


class BackendError(PodrunError):
    """A scheduler is unreachable or refused a request."""


class DataError(PodrunError):
    """A data set is missing or malformed."""
