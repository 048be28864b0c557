"""Errors shown to the user as one line, without a traceback (``podrun: error: ...``).

They live at the bottom of ``jobs/`` because a rank raises them too (a missing data set,
a malformed resolved config); the launcher adds its own in :mod:`orchestrator.errors`.
"""


class PodrunError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(PodrunError):
    """A cluster profile, recipe, job spec or override is invalid."""


class DataError(PodrunError):
    """A data set is missing or malformed."""
