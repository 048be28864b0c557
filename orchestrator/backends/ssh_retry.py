"""SSH that survives a dropped connection: every call is retried with backoff on a new connection.

A login node reboots, a VPN blips, sshd restarts: the connection of an :class:`SSHTunnel`
drops in the middle of a command, an SFTP read, or before it was opened. :class:`RetryingTunnel`
wraps it; a call that fails because the connection is gone closes it and runs again on a
fresh one, after 1, 2, 4 ... 20 s, for up to :data:`RETRY_FOR_S` seconds, telling the user
on stderr each time. Commands, file writes and reads at an offset are safe to repeat.

One call is not: ``sbatch``. :meth:`RetryingTunnel.run_once` runs a command once and raises
:class:`ConnectionLost` if the reply did not come back; the Slurm backend then asks Slurm
whether the job got there before it submits again (see
:mod:`orchestrator.backends.slurm_submit`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from orchestrator.backends.tunnel import CommandResult, LoginUnreachable, SSHTunnel, Tunnel
from orchestrator.errors import BackendError

RETRY_FOR_S = 120.0
T = TypeVar("T")


class ConnectionLost(BackendError):
    """The SSH connection dropped before the answer came back."""


def is_connection_loss(exc: BaseException) -> bool:
    """A failure that a new connection may cure (not a refused key, a missing file or a bad command)."""
    import paramiko

    if isinstance(exc, (ConnectionLost, LoginUnreachable, paramiko.SSHException, EOFError, ConnectionError,
                        TimeoutError)):
        return not isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException))
    return type(exc) is OSError  # "Socket is closed"; not FileNotFoundError or PermissionError


class RetryingTunnel(Tunnel):
    """An :class:`SSHTunnel` whose calls outlive a dropped connection."""

    def __init__(self, inner: SSHTunnel, retry_for_s: float = RETRY_FOR_S) -> None:
        self.inner, self.retry_for_s = inner, retry_for_s

    def run(self, argv: list[str], *args: Any, **kwargs: Any) -> CommandResult:
        return self._retried(lambda: self.run_once(argv, *args, **kwargs))

    def run_once(self, argv: list[str], *args: Any, **kwargs: Any) -> CommandResult:
        """Run ``argv`` once.

        Raises:
            ConnectionLost: the connection dropped; the command may or may not have run.
        """
        result = self._once(lambda: self.inner.run(argv, *args, **kwargs))
        if result.returncode == -1:  # paramiko's "no exit status": the channel closed under the command
            self._drop()
            raise ConnectionLost(f"SSH to {self.inner.where} dropped while '{argv[0]}' ran")
        return result

    def write_text(self, path: str, text: str, *args: Any, **kwargs: Any) -> None:
        self._retried(lambda: self._once(lambda: self.inner.write_text(path, text, *args, **kwargs)))

    def read_text(self, path: str, offset: int = 0) -> str | None:
        return self._retried(lambda: self._once(lambda: self.inner.read_text(path, offset)))

    def close(self) -> None:
        self.inner.close()

    def _once(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:
            if not is_connection_loss(exc):
                raise
            self._drop()
            raise ConnectionLost(f"SSH to {self.inner.where}: {type(exc).__name__}: {exc}") from None

    def _drop(self) -> None:
        try:
            self.inner.close()
        except Exception:  # noqa: BLE001 - the connection is gone anyway
            self.inner._sftp = self.inner._client = None

    def _retried(self, call: Callable[[], T]) -> T:
        """``call()``, again on a new connection after each :class:`ConnectionLost`, with backoff.

        Raises:
            BackendError: the connection did not come back within ``retry_for_s``.
        """
        began = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(ConnectionLost),
            wait=tenacity.wait_exponential(multiplier=1, min=1, max=20),
            stop=tenacity.stop_after_delay(self.retry_for_s), before_sleep=self._say_retrying, reraise=True)
        try:
            return retrying(call)
        except ConnectionLost as exc:
            raise BackendError(f"{exc}; not back after {time.monotonic() - began:.0f} s of retries: check the "
                               "login host, then run the command again") from None

    @staticmethod
    def _say_retrying(state: tenacity.RetryCallState) -> None:
        print(f"podrun: {state.outcome.exception()}; retrying in {state.next_action.sleep:.0f} s "
              f"(attempt {state.attempt_number + 1})", file=sys.stderr, flush=True)


def retrying(tunnel: Tunnel) -> Tunnel:
    """``tunnel``, made to outlive dropped connections if it is an SSH one."""
    return RetryingTunnel(tunnel) if isinstance(tunnel, SSHTunnel) else tunnel
