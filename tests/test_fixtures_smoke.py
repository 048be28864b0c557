"""The integration fixtures work: a real two-host Slurm cluster, each node a host with its own address and
name, and a real sshd on a login host of its own (see tests/fixtures/)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import paramiko
import pytest

from tests.fixtures.slurm import SlurmCluster
from tests.fixtures.sshd import SshServer


def ssh_client(server: SshServer, known_hosts: Path) -> paramiko.SSHClient:
    """A paramiko client that trusts only the host keys in ``known_hosts`` and is connected to ``server``."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(**server.connect_kwargs())
    return client


def ssh_run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    """Run ``command`` remotely; return its exit status and stdout."""
    _, stdout, _ = client.exec_command(command, timeout=30)
    out = stdout.read().decode()
    return stdout.channel.recv_exit_status(), out


def test_sinfo_shows_two_idle_nodes(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.node_states() == dict.fromkeys(slurm_cluster.nodes, "idle")


def test_two_node_job_runs_one_rank_per_host_each_with_its_own_address(slurm_cluster: SlurmCluster,
                                                                         tmp_path: Path) -> None:
    job_id = slurm_cluster.run(
        "sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", f"--chdir={tmp_path}",
        f"--output={tmp_path}/%j.out", "--wrap",
        "srun bash -c 'echo $SLURMD_NODENAME $(hostname) $(hostname -I) $SLURM_PROCID $SLURM_NTASKS'",
    ).stdout.strip()  # fmt: skip

    assert slurm_cluster.wait_job(job_id) == "COMPLETED"
    lines = sorted(" ".join(line.split()) for line in (tmp_path / f"{job_id}.out").read_text().splitlines())
    hosts = slurm_cluster.hosts
    assert lines == [f"{node} {node} {hosts.address(node)} {rank} 2" for rank, node in enumerate(slurm_cluster.nodes)]


def test_ssh_runs_a_command_with_the_known_host_key(ssh_server: SshServer) -> None:
    client = ssh_client(ssh_server, ssh_server.known_hosts_path)
    try:
        assert ssh_run(client, "echo hi") == (0, "hi\n")
    finally:
        client.close()


def test_ssh_refuses_a_changed_host_key(ssh_server: SshServer) -> None:
    with pytest.raises(paramiko.BadHostKeyException):
        ssh_client(ssh_server, ssh_server.wrong_known_hosts())


def test_ssh_refuses_an_unknown_host(ssh_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.touch()
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        ssh_client(ssh_server, empty)


def test_openssh_client_checks_the_host_key(ssh_server: SshServer) -> None:
    proc = subprocess.run(ssh_server.ssh_command("echo hi"), capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (0, "hi\n"), proc.stderr


def test_sinfo_over_ssh(ssh_server: SshServer, slurm_cluster: SlurmCluster) -> None:
    client = ssh_client(ssh_server, ssh_server.known_hosts_path)
    try:
        conf = shlex.quote(str(slurm_cluster.conf_path))
        status, out = ssh_run(client, f"export SLURM_CONF={conf}; sinfo -h -N -o '%N %t'")
    finally:
        client.close()
    assert status == 0
    assert sorted(out.splitlines()) == [f"{node} idle" for node in slurm_cluster.nodes]


def test_the_login_host_is_another_machine(ssh_server: SshServer, slurm_cluster: SlurmCluster) -> None:
    client = ssh_client(ssh_server, ssh_server.known_hosts_path)
    try:
        status, out = ssh_run(client, "hostname; hostname -I")
    finally:
        client.close()
    assert status == 0 and out.split() == [slurm_cluster.hosts.named("login"), ssh_server.host]
