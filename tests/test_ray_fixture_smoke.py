"""The Ray fixture works: two alive nodes, and auth is enforced (the backend tests run the jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.ray_cluster import AUTH_VARS, RayCluster


def no_token_env(home: Path) -> dict[str, str]:
    """An environment with no Ray token anywhere: no auth variables, and a HOME without ``.ray/``."""
    env = {key: value for key, value in os.environ.items() if key not in AUTH_VARS}
    return {**env, "HOME": str(home)}


def http_status(url: str, headers: dict[str, str]) -> int:
    """The HTTP status of a GET (errors included)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_nodes_are_alive_each_on_a_host_of_its_own(ray_cluster: RayCluster) -> None:
    nodes = ray_cluster.alive_nodes()
    assert len(nodes) == 2
    assert sorted(node["resources_total"]["CPU"] for node in nodes) == [1.0, 2.0]
    assert sorted(node["node_ip"] for node in nodes) == sorted(map(ray_cluster.hosts.address, ray_cluster.hosts.nodes))
    status = ray_cluster.ray("status", f"--address={ray_cluster.address}").stdout
    assert status.count(" node_") == 2, status


@pytest.mark.slow
def test_requests_without_the_token_are_refused(ray_cluster: RayCluster, tmp_path: Path) -> None:
    version_url = f"{ray_cluster.dashboard_url}/api/version"
    assert http_status(version_url, {}) == 401
    assert http_status(version_url, {"Authorization": "Bearer " + "0" * 64}) == 403
    with_token = http_status(version_url, ray_cluster.auth_headers)  # not inside assert: pytest would print it
    assert with_token == 200

    # A real client in a clean process (the auth mode is read once per process).
    probe = (
        "from ray.exceptions import AuthenticationError\n"
        "from ray.job_submission import JobSubmissionClient\n"
        "try:\n"
        f"    JobSubmissionClient({ray_cluster.dashboard_url!r}).list_jobs()\n"
        "except AuthenticationError:\n"
        "    print('REFUSED')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=no_token_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "REFUSED", proc.stderr[-2000:]
