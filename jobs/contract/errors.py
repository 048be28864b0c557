"""Errors shown to the user as one line, without a traceback (``podrun: error: ...``).

They live at the bottom of ``jobs/`` because a rank raises them too (a missing data set,
a malformed resolved config); the launcher adds its own in :mod:`orchestrator.errors`.
Each carries the exit code a rank ends with when it stops on it (:mod:`jobs.contract.exit_codes`).
"""

from jobs.contract import exit_codes


class PodrunError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""

    exit_code = exit_codes.FAILED


class ConfigError(PodrunError):
    """A cluster profile, recipe, job spec or override is invalid."""


class DataError(PodrunError):
    """A data set is missing or malformed."""


class CheckpointError(PodrunError):
    """No checkpoint in a folder can be resumed from (all truncated, damaged or unreadable)."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that could run code when loaded, or one that another user could have replaced: refused.

    Its pickle needs more than tensors, numbers, strings, lists and dicts, or it (or the job's
    checkpoint folder) is writable by its group or others, or owned by someone else. Exit 64:
    the user fixes the folder or removes the file; nothing in it ran.
    """

    exit_code = exit_codes.CONFIG_ERROR


class CheckpointWriteError(PodrunError):
    """A checkpoint could not be written (a full disk); the earlier ones are intact."""

    exit_code = exit_codes.CHECKPOINT_FAILED
