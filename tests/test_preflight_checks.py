"""Preflight checks on recorded real outputs (tests/data/preflight/README.md names each source),
plus the storage check on a real full filesystem."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from jobs.preflight.collectives import (
    CollectivesOutcome,
    alg_bandwidth_gbps,
    blame_slow_nodes,
    bus_bandwidth_gbps,
    evaluate_collectives,
    pair_rounds,
    ring_pairs,
)
from jobs.preflight.gpu import NodeGpus, evaluate_gpus, gpu_problems, model_matches
from jobs.preflight.infiniband import evaluate_infiniband, parse_rate, parse_state, read_ports
from jobs.preflight.result import Report, failed, outliers, passed, skipped
from jobs.preflight.software import clock_problems, compare_versions, evaluate_software
from jobs.preflight.storage import check_checkpoint_root

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

DATA = Path(__file__).resolve().parent / "data" / "preflight"
IB, NVML = DATA / "ib", DATA / "nvml"


def nvml(name: str) -> NodeGpus:
    return NodeGpus.from_dict(json.loads((NVML / name).read_text()))


# ------------------------------------------------------------------ GPUs (NVML values)


def test_healthy_h100_node_passes_with_its_driver():
    result = evaluate_gpus(nvml("h100-sxm-x8.json"), 8, "H100 80GB HBM3")
    assert result.status == "pass" and result.detail == "8 x NVIDIA H100 80GB HBM3, driver 565.57.01"


def test_count_and_model_must_match_the_profile():
    node = nvml("h100-sxm-x8.json")
    assert "8 GPU(s) visible, the profile says 16" in evaluate_gpus(node, 16, None).detail
    result = evaluate_gpus(node, 8, "A100-SXM4-80GB")
    assert result.failed and "GPU 0 is a NVIDIA H100 80GB HBM3, the profile says A100-SXM4-80GB" in result.detail
    assert model_matches("V100-SXM3-32GB", "Tesla V100-SXM3-32GB")  # the dgx2 profile's spelling


def test_pending_row_remap_names_the_gpu():
    result = evaluate_gpus(nvml("a100-sxm4-x4.json"), 4, "A100-SXM4-80GB")
    assert result.failed and result.detail == "GPU 1 row remap pending (reset the GPU)"


def test_any_clock_event_reason_but_idle_fails():
    result = evaluate_gpus(nvml("rtx-a6000-x9.json"), 9, "RTX A6000")
    assert result.failed
    assert [p.split(" clocks")[0] for p in result.detail.split("; ")] == ["GPU 2", "GPU 3", "GPU 8"]
    assert "clocks held down by SW Power Cap" in result.detail
    (v100,) = nvml("v100-sxm2-32gb-c4130.json").gpus
    assert gpu_problems(v100, "V100-SXM2-32GB") == ["clocks held down by HW Slowdown, HW Power Brake Slowdown"]


def test_no_gpus_in_the_profile_is_skipped_and_no_nvml_is_a_failure():
    assert evaluate_gpus(NodeGpus(error="NVML: NVML Shared Library Not Found"), 0, None) == \
        skipped("profile has no GPUs")
    assert evaluate_gpus(NodeGpus(error="NVML: NVML Shared Library Not Found"), 8, None) == \
        failed("NVML: NVML Shared Library Not Found")


# ------------------------------------------------------------------ InfiniBand (sysfs trees)


def test_sysfs_values_parse():
    assert parse_state("4: ACTIVE\n") == "ACTIVE" and parse_state("2: Polling") == "Polling"
    assert parse_rate("100 Gb/sec (4X EDR)") == 100.0 and parse_rate("56 Gb/sec (4X FDR)") == 56.0
    assert parse_rate("") is None
    (port,) = read_ports("mlx5_2", IB / "dgx-edr-4hca")
    assert (port.name, port.state, port.phys_state, port.rate_gbps) == ("mlx5_2:1", "ACTIVE", "LinkUp", 100.0)


def test_healthy_dgx_hcas_pass_at_the_expected_rate():
    hcas = ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]
    assert evaluate_infiniband(hcas, 100, IB / "dgx-edr-4hca") == passed("4 port(s) ACTIVE at 100 Gb/sec")
    slow = evaluate_infiniband(hcas, 200, IB / "dgx-edr-4hca")  # an HDR profile on this EDR host
    assert slow.failed and "mlx5_0:1 runs at 100 Gb/sec (4X EDR), expected 200 Gb/sec" in slow.detail


def test_unplugged_port_and_missing_hca_fail():
    root = IB / "sulu-port1-unplugged"
    assert evaluate_infiniband(["mlx4_0"], None, IB / "sulu-both-ports-up").status == "pass"
    assert evaluate_infiniband(["mlx4_0"], None, root) == failed("mlx4_0:1 is DOWN (Polling)")
    assert evaluate_infiniband(["mlx4_0:2"], None, root).status == "pass"  # NAME:PORT checks that port only
    assert evaluate_infiniband(["mlx5_0"], None, root) == failed(f"mlx5_0 not found under {root}")
    assert evaluate_infiniband([], None, root) == skipped("profile lists no HCAs")


# ------------------------------------------------------------------ collectives (nccl-tests numbers)


@pytest.mark.parametrize("nbytes,time_us,ranks,algbw,busbw", [
    (33554432, 195.40, 8, 171.72, 300.51),  # kvcache-ai/Mooncake#3484
    (262144, 325.1, 2, 0.81, 0.81),  # NVIDIA/nccl#1184
])
def test_bandwidths_follow_nccl_tests(nbytes, time_us, ranks, algbw, busbw):
    measured = alg_bandwidth_gbps(nbytes, time_us * 1e-6)
    assert round(measured, 2) == algbw
    assert round(bus_bandwidth_gbps(measured, ranks), 2) == busbw


def test_pairwise_tests_name_the_slow_node():
    assert ring_pairs(2) == [] and ring_pairs(4) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert pair_rounds(ring_pairs(4)) == [[0, 2], [1, 3]]
    assert pair_rounds(ring_pairs(3)) == [[0], [1], [2]]
    healthy, slow = 300.51, 0.81  # the recorded 8-rank H100 run and the recorded slow 100GbE pair
    pairs = {("n1", "n2"): healthy, ("n2", "n3"): slow, ("n3", "n4"): slow, ("n4", "n1"): healthy}
    assert blame_slow_nodes(pairs, 100) == ["n3"]
    assert blame_slow_nodes(dict.fromkeys(pairs, slow), 100) == []  # everything slow: the fabric, not a node
    outcome = CollectivesOutcome(ranks=32, busbw_gbps=40.0, pair_busbw=pairs)
    assert evaluate_collectives("n3", outcome, 100).detail.startswith("slow node: pairwise busbw n2-n3 0.81, n3-n4")
    assert evaluate_collectives("n1", outcome, 100).status == "pass"
    two = evaluate_collectives("n1", CollectivesOutcome(ranks=16, busbw_gbps=0.81), 100)
    assert two == failed("busbw 0.81 GB/s over 16 ranks < 100 (fewer than three nodes: no pair test can "
                         "single one out)")


def test_collectives_without_threshold_or_peers_is_skipped():
    assert evaluate_collectives("n1", CollectivesOutcome(ranks=1), 10).status == "skipped"
    no_threshold = evaluate_collectives("n1", CollectivesOutcome(ranks=2, busbw_gbps=0.3), None)
    assert no_threshold.status == "skipped" and "busbw 0.3 GB/s" in no_threshold.detail


# ------------------------------------------------------------------ software, report


def test_versions_and_clocks_are_judged_by_majority():
    same = {"torch": "2.13.0", "python": "3.11.7"}
    by_node = {"n1": same, "n2": same, "n3": {"torch": "2.12.1", "python": "3.11.7"}}
    assert compare_versions(by_node) == {"n3": ["torch 2.12.1 (the other nodes: 2.13.0)"]}
    tie = outliers({"n1": "535.104.05", "n2": "550.54.15"}, "driver")
    assert set(tie) == {"n1", "n2"} and "differs across nodes" in tie["n1"]
    assert clock_problems({"n1": 0.0, "n2": 0.01, "n3": 2.5}, 1.0) == {"n3": "clock +2.490 s off the others (max 1 s)"}
    assert evaluate_software("n1", {"n1": same}, None, 1.0).status == "skipped"
    assert evaluate_software("n2", {"n1": same, "n2": same}, {"n1": 0.0, "n2": 0.002}, 1.0).status == "pass"


def test_report_table_and_round_trip():
    report = Report(nodes=["node1", "node2"], duration_s=12.5, results={
        "node1": {"storage": passed("ok")},
        "node2": {"storage": failed("checkpoint root: /x not writable (No space left on device)")}})
    assert report.failures()["node2"] == ["gpu: no result (the node sent no report)",
                                          "infiniband: no result (the node sent no report)",
                                          "collectives: no result (the node sent no report)",
                                          "storage: checkpoint root: /x not writable (No space left on device)",
                                          "software: no result (the node sent no report)"]
    table = report.table()
    assert table.splitlines()[0].split() == ["node", "gpu", "infiniband", "collectives", "storage", "software"]
    assert table.splitlines()[-1] == "preflight 2 of 2 node(s) FAILED in 12.5 s"
    assert Report.from_json(report.to_json()).table() == table


# ------------------------------------------------------------------ storage on a real full filesystem


@pytest.fixture
def full_tmpfs(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["dd", "if=/dev/zero", f"of={mount}/fill", "bs=64k"], capture_output=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_checkpoint_root_on_a_full_filesystem_fails(full_tmpfs, tmp_path):
    result = check_checkpoint_root(full_tmpfs / "job" / "id", 0.5, "node2")
    assert result == failed(f"checkpoint root: {full_tmpfs} not writable (No space left on device); "
                            "0.00 GB free, needs 0.5 GB")
    assert check_checkpoint_root(tmp_path / "ok" / "id", 0.5, "node1").status == "pass"
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["fill"] and not (tmp_path / "ok").exists()
