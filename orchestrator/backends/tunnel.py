"""Where scheduler commands run: here (:class:`LocalTunnel`) or on a login node over SSH.

A tunnel runs a command, writes a file and reads a file. :class:`SSHTunnel` uses paramiko
with the host key checked against known_hosts (``RejectPolicy``: an unknown or changed key
is refused, never added), key or agent authentication, and one connection reused for
every call of a command.

Environment variables for a command (the profile's ``slurm.login.env``, and what ``sbatch``
must pass to the job: see :mod:`orchestrator.spec.job_env`) travel in the channel's input, which
the remote shell evaluates (``eval "$(cat)"``): never in the command line, which ``ps``
shows on the login node. Files are written readable by their owner only.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from jobs.contract.private_files import FILE_MODE, private_dir, write_private
from orchestrator.errors import BackendError
from orchestrator.spec.job_env import env_key, expand_values
from orchestrator.spec.profiles import LoginConfig


class LoginUnreachable(BackendError):
    """The login host did not answer or dropped the connection (worth retrying: see orchestrator.backends.ssh_retry)."""


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Tunnel(ABC):
    @abstractmethod
    def run(self, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> CommandResult:
        """Run ``argv`` with ``env`` added to its environment; a missing program gives returncode 127."""

    @abstractmethod
    def write_text(self, path: str, text: str, mode: int = FILE_MODE) -> None:
        """Create ``path`` with ``text``, its folder readable by its owner only."""

    @abstractmethod
    def read_text(self, path: str, offset: int = 0) -> str | None:
        """``path``'s content from byte ``offset``, or None if it does not exist."""

    def close(self) -> None:
        """Release the connection, if any."""


class LocalTunnel(Tunnel):
    def run(self, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> CommandResult:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env=os.environ | env if env else None)
        except FileNotFoundError:
            return CommandResult(127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            raise BackendError(f"'{shlex.join(argv)}' did not answer within {timeout:.0f} s") from None
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def write_text(self, path: str, text: str, mode: int = FILE_MODE) -> None:
        private_dir(Path(path).parent)
        write_private(Path(path), text, mode)

    def read_text(self, path: str, offset: int = 0) -> str | None:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return None


class SSHTunnel(Tunnel):
    """Commands and files on a login node, over one verified SSH connection."""

    def __init__(self, login: LoginConfig) -> None:
        self.login = login
        self._client = None
        self._sftp = None

    @property
    def where(self) -> str:
        return f"{self.login.user + '@' if self.login.user else ''}{self.login.host}:{self.login.port}"

    def _connect(self):
        if self._client is not None:
            return self._client
        import paramiko

        known_hosts = Path(self.login.known_hosts).expanduser()
        client = paramiko.SSHClient()
        if known_hosts.is_file():
            client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.login.host, port=self.login.port, username=self.login.user,
                key_filename=str(Path(self.login.key_file).expanduser()) if self.login.key_file else None,
                allow_agent=True, look_for_keys=self.login.key_file is None,
                timeout=self.login.connect_timeout_s, banner_timeout=self.login.connect_timeout_s,
            )
        except paramiko.BadHostKeyException:
            raise BackendError(
                f"host key of {self.where} does not match {known_hosts}: it changed, or someone is in between; "
                f"if the change is expected, remove the old key with: ssh-keygen -f {known_hosts} -R "
                f"'[{self.login.host}]:{self.login.port}'"
            ) from None
        except paramiko.AuthenticationException:
            raise BackendError(f"SSH authentication to {self.where} failed: check slurm.login.user and key_file, "
                               "or load the key into ssh-agent") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise BackendError(
                    f"{self.where} is not in {known_hosts}: check its fingerprint, then add it with "
                    f"ssh-keyscan -p {self.login.port} {self.login.host} >> {known_hosts}"
                ) from None
            raise LoginUnreachable(f"SSH to {self.where} failed: {exc}") from None
        except (TimeoutError, OSError) as exc:
            raise LoginUnreachable(f"cannot reach login host {self.where}: {exc}") from None
        self._client = client
        return client

    def _sftp_client(self):
        if self._sftp is None:
            self._sftp = self._connect().open_sftp()
        return self._sftp

    def run(self, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> CommandResult:
        # login.env keeps ${VAR} as written: its values come from this machine's environment
        variables = expand_values(self.login.env, os.environ) | (env or {})
        command = ('eval "$(cat)"; ' if variables else "") + shlex.join(argv)
        stdin, stdout, stderr = self._connect().exec_command(command, timeout=timeout)
        if variables:
            stdin.write("".join(f"export {env_key(k)}={shlex.quote(v)}\n" for k, v in variables.items()))
            stdin.channel.shutdown_write()
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        return CommandResult(stdout.channel.recv_exit_status(), out, err)

    def write_text(self, path: str, text: str, mode: int = FILE_MODE) -> None:
        self.run(["install", "-d", "-m", "700", str(Path(path).parent)])  # the mode, even if it exists
        sftp = self._sftp_client()
        with sftp.open(path, "w") as handle:
            handle.chmod(mode)  # before the first byte
            handle.write(text)

    def read_text(self, path: str, offset: int = 0) -> str | None:
        try:
            with self._sftp_client().open(path, "r") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        if self._client is not None:
            self._client.close()
        self._sftp = self._client = None


def open_tunnel(login: LoginConfig | None) -> Tunnel:
    """An SSH tunnel to ``login``, or a local one when there is no login host."""
    return SSHTunnel(login) if login is not None else LocalTunnel()
