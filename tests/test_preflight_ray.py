"""Preflight on the real two-node Ray cluster: one task per node; Ray cannot exclude a node, so a
failing node (here: no data set where the profile says) stops the job before training."""

from __future__ import annotations

import pytest
import yaml

from jobs.contract import exit_codes
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.test_ray_backend import JOB, ray_logs, ray_profile  # noqa: F401 (ray_profile is a fixture)

pytestmark = pytest.mark.slow


def test_every_ray_node_is_checked_and_a_failure_stops_before_training(ray_profile, local_env, tmp_path,  # noqa: F811
                                                                        capsys):
    profiles = yaml.safe_load(ray_profile.read_text())
    profiles["profiles"]["test"]["preflight"] = {"min_busbw_gbps": 0.001, "min_free_gb": 0.05}
    profiles["profiles"]["test"]["data_root"] = str(tmp_path / "no-data-here")
    ray_profile.write_text(yaml.safe_dump(profiles))
    assert main(["launch", *JOB, "--backend", "ray"]) == exit_codes.PREFLIGHT_FAILED
    record = list_records(local_env)[0]
    assert record.state == "FAILED" and record.exit_code == exit_codes.PREFLIGHT_FAILED
    logs = ray_logs(record)
    # Table rows (each node's log lines may show twice: both raylets of this one host tail the same files).
    rows = {line.split("[preflight] ")[1] for line in logs.splitlines() if "FAIL: data: " in line}
    assert len({row.split()[0] for row in rows if "skipped: profile has no GPUs" in row}) == 2, logs[-3000:]
    assert all("pass: busbw" in row for row in rows)  # the two nodes' all-reduce itself was fine
    assert "this backend cannot exclude nodes" in logs and "[train]" not in logs
