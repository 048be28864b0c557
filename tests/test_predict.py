"""podrun predict: the model's parts, the CLI, and the model against published MLPerf results."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from jobs.contract import exit_codes
from orchestrator.cli import main
from orchestrator.errors import ConfigError
from orchestrator.studies.predict_mlperf import (
    FIRST_RCP_ROUND,
    RESNET50_PARAMETERS,
    RESULTS_FILE,
    check_results,
    load_results,
    within,
)
from orchestrator.studies.predict_model import Fabric, allreduce_seconds, bus_bandwidth, calibrate_rate, step_seconds
from orchestrator.studies.predict_validate import (
    fit_constants,
    leave_one_round_out,
    only,
    rcp_release,
    validate_report,
)
from orchestrator.studies.rcp import convergence_points, epochs_to_converge, rcp_round, rcp_rounds
from tests.conftest import REPO

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

DGX_A100 = Fabric(gpus_per_node=8, nvlink_bps=300e9, network_bps=200e9, hop_s=5e-6)


def test_rcps_come_from_the_installed_package_and_interpolate_between_batches():
    import mlperf_logging

    rounds = rcp_rounds()
    assert rounds[0] == "1.0.0" and "4.0.0" in rounds
    raw = json.loads((Path(mlperf_logging.__file__).parent / "rcp_checker/training_2.0.0/rcps_resnet.json").read_text())
    points = convergence_points("2.0.0")
    for entry in raw.values():
        seeds = entry["Epochs to converge"]
        assert epochs_to_converge(entry["BS"], points) == pytest.approx(sum(seeds) / len(seeds))
    low, high = points[3], points[4]
    middle = (low.global_batch + high.global_batch) // 2
    assert min(low.mean_epochs, high.mean_epochs) <= epochs_to_converge(middle, points) <= max(
        low.mean_epochs, high.mean_epochs)
    assert epochs_to_converge(256, points) == points[0].mean_epochs
    assert rcp_round("0.6.0") == ("1.0.0", "round 0.6.0 predates RCPs (they start at 1.0.0): used 1.0.0")
    assert rcp_round(None)[0] == rounds[-1] and rcp_round("3.1") == ("3.1.0", "")
    with pytest.raises(ConfigError, match="give one like 3.1"):
        rcp_round("three")


def test_allreduce_uses_nvlink_inside_a_node_and_the_hcas_between_nodes():
    size = 100e6
    one_node = allreduce_seconds(size, 8, DGX_A100, "ring")
    assert one_node == pytest.approx(2 * 7 / 8 * size / 300e9 + 2 * 7 * 1e-6)
    assert bus_bandwidth(16, DGX_A100) == 200e9
    ring, tree = (allreduce_seconds(size, 4096, DGX_A100, kind) for kind in ("ring", "tree"))
    assert tree < ring and allreduce_seconds(size, 4096, DGX_A100) == tree
    assert tree == pytest.approx(2 * 4095 / 4096 * size / 200e9 + 2 * 12 * 5e-6)


def test_the_trees_chunk_costs_one_transfer_per_level_of_nodes_up_and_down():
    size, chunk = 51e6, 48 * 1024**2
    piped = replace(DGX_A100, tree_chunk_bytes=chunk)
    bare = allreduce_seconds(size, 4320, DGX_A100, "tree")  # 540 nodes: ceil(log2 540) = 10 levels
    assert allreduce_seconds(size, 4320, piped, "tree") == pytest.approx(bare + 2 * 10 * chunk / 200e9)
    assert allreduce_seconds(size, 4320, piped, "ring") == allreduce_seconds(size, 4320, DGX_A100, "ring")
    assert allreduce_seconds(size, 8, piped) == allreduce_seconds(size, 8, DGX_A100)  # one node: no level to climb
    # NCCL's choice: the ring on a few nodes, where its 2 (N-1) hops cost less than the tree's fill; the tree at scale
    assert allreduce_seconds(size, 32, piped) == allreduce_seconds(size, 32, piped, "ring")
    assert allreduce_seconds(size, 4320, piped) == allreduce_seconds(size, 4320, piped, "tree")


def test_calibration_inverts_the_step_model():
    size, bucket = 51e6, 25 * 1024**2
    allreduce = allreduce_seconds(size, 8, DGX_A100)
    rate = calibrate_rate(408, 0.1239, 0.005, allreduce, size, bucket)
    assert step_seconds(408, rate, 0.005, allreduce, size, bucket)[0] == pytest.approx(0.1239)


def test_resnet50_parameters_match_the_recipe_model(podrun_home):
    from orchestrator.spec.resolve import load_job
    from orchestrator.studies.predict import model_parameters

    assert model_parameters(load_job("resnet50")) == RESNET50_PARAMETERS


def test_predictor_against_published_mlperf_results():
    results = load_results()
    gpus = {results.hardware[row.hardware].gpu.split("-")[0] for row in results.results}
    assert len(results.results) >= 30 and {"V100", "A100", "H100", "L40S"} <= gpus
    assert {"1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0"} <= {row.round for row in results.results}
    checks, _ = leave_one_round_out(results, results)
    counted = [c for c in checks if c.counted]
    assert len(counted) >= 15 and within(checks)[0] >= 0.9 * len(counted)
    for check in checks:
        row, found = check.row, check.prediction
        if found is None:
            continue
        assert found.global_batch == row.global_batch and found.nodes == row.nodes
        if row.round == "0.6":  # before RCPs existed it is low, for the two reasons docs/PREDICTION.md gives:
            assert check.error < -0.15, (row.system, check.error)
            assert found.epochs < row.epochs - 5  # the RCPs converge faster than v0.6's hyperparameters did
            assert found.step_s < check.measured_step_s  # the floor is below MXNet 19.05's per-step cost
            assert check.rcp_note.startswith("round 0.6.0 predates RCPs")
        elif row.nodes >= 500:  # the largest A100 runs: inside only with the tree's fill, and still short
            assert -0.20 <= check.error < -0.10 and found.step_s < 0.9 * check.measured_step_s, row.system
            assert check.chunk_mib > 0
            without = [c for c in check_results(only(results, lambda r, kept=row.round: r.round == kept),
                                                check.floor_ms, 0.0) if c.row == row]
            assert without[0].error < -0.20, row.system  # a perfectly pipelined tree: the miss of the floor alone


def test_a_rounds_floor_and_chunk_are_fitted_on_the_other_rounds_only():
    results = load_results()
    before, _ = leave_one_round_out(results, results)
    fitted = {check.row.round: (check.floor_ms, check.chunk_mib) for check in before}
    for held in ("2.0", "3.1"):
        others = only(results, lambda r, h=held: r.round != h and r.round_key >= FIRST_RCP_ROUND)
        assert fitted[held] == fit_constants(others)
    assert len(set(fitted.values())) > 1  # one pair for every round would be one fitted on all of them
    assert {chunk for _, chunk in fitted.values()} != {0.0}  # the tree's chunk is fitted, not left out
    # the held-out round's multi-node rows twice as slow: its constants and predictions stay, its errors follow
    slower = results.model_copy(update={"results": [
        row.model_copy(update={"time_to_train_s": row.time_to_train_s * 2})
        if row.round == "2.0" and row.nodes > 1 else row for row in results.results]})
    after, _ = leave_one_round_out(slower, slower)
    mine = [(b, a) for b, a in zip(before, after) if b.row.round == "2.0" and b.prediction is not None]
    assert mine and all(b.floor_ms == a.floor_ms and b.chunk_mib == a.chunk_mib and b.prediction == a.prediction
                        for b, a in mine)
    assert all(a.error == pytest.approx((b.error + 1) / 2 - 1) for b, a in mine)


def _renamed(tmp_path: Path) -> Path:
    """The bundled results with node types podrun has never heard of."""
    data = yaml.safe_load(RESULTS_FILE.read_text())
    names = {old: f"cluster-{index}" for index, old in enumerate(data["hardware"])}
    data["hardware"] = {names[old]: sheet for old, sheet in data["hardware"].items()}
    for row in data["results"]:
        row["hardware"] = names[row["hardware"]]
    path = tmp_path / "renamed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_checks_any_results_file_without_a_job(tmp_path, capsys):
    assert main(["predict", "--validate", str(RESULTS_FILE)]) == 0
    bundled = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\d+ of \d+ within ±20%", bundled[-1])
    assert bundled[0].startswith("| round | system |") and any("| calibration |" in line for line in bundled)
    assert main(["predict", "--validate", str(_renamed(tmp_path))]) == 0  # unknown node types: no KeyError
    renamed = capsys.readouterr().out.splitlines()
    assert renamed[-1] == bundled[-1] and len(renamed) == len(bundled)


def test_validate_says_in_one_line_what_is_wrong(tmp_path, capsys):
    assert main(["predict"]) == exit_codes.CONFIG_ERROR
    assert "needs a JOB and --nodes" in capsys.readouterr().err
    assert main(["predict", "resnet50", "--validate", str(RESULTS_FILE)]) == exit_codes.CONFIG_ERROR
    assert "without a JOB" in capsys.readouterr().err
    data = yaml.safe_load(RESULTS_FILE.read_text())
    data["results"][0]["hardware"] = "nowhere"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    for path, expected in ((broken, "names hardware 'nowhere', which is not under hardware:"),
                           (tmp_path / "absent.yaml", "not found")):
        assert main(["predict", "--validate", str(path)]) == exit_codes.CONFIG_ERROR
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("podrun: error: ") and expected in err, err


@pytest.mark.parametrize("results", [RESULTS_FILE, RESULTS_FILE.with_name("resnet_results_others.yaml")])
def test_docs_show_what_validate_prints(results):
    docs = (REPO / "docs" / "PREDICTION.md").read_text()
    found = re.search(r"RCPs of mlperf-logging (\S+)", docs)
    assert found, "docs/PREDICTION.md names the mlperf-logging release its tables were computed with"
    recorded = found.group(1)
    if recorded != rcp_release():  # another release ships other RCP files, so other epochs and errors
        pytest.skip(f"docs/PREDICTION.md was computed with mlperf-logging {recorded}'s RCPs; "
                    f"{rcp_release()} is installed")
    report = validate_report(results)
    assert f"podrun predict --validate {results.relative_to(REPO)}" in docs
    assert [line for line in report.splitlines() if line not in docs] == []


def test_predict_prints_a_table_writes_a_plot_and_logs_to_mlflow(podrun_home, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    plot = tmp_path / "predict.png"
    assert main(["predict", "resnet50:superpod", "--set", "cluster=superpod", "--nodes", "1,8,64", "--plot",
                 str(plot), "--log"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [line[0] for line in lines] == ["1", "8", "64"] and [line[1] for line in lines] == ["8", "64", "512"]
    assert "RCP 4.0.0" in out and "profile superpod throughput.resnet50" in out
    assert plot.stat().st_size > 10_000
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("resnet50").experiment_id],
                             "tags.`podrun.kind` = 'prediction'")[0]
    history = client.get_metric_history(run.info.run_id, "predicted_time_to_train_s")
    assert [m.step for m in history] == [1, 8, 64] and history[0].value > history[1].value > history[2].value
    hours = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "predicted_gpu_hours")}
    assert hours[8] == pytest.approx(64 * history[1].value / 3600)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "prediction")} == {
        "prediction/predict.txt", "prediction/predict.png"}


def test_predict_without_any_throughput_says_what_to_give(podrun_home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["predict", "resnet50", "--set", "cluster=local", "--nodes", "1"]) == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --throughput" in err
    code = main(["predict", "resnet50:superpod", "--set", "cluster=superpod", "--nodes", "0"])
    assert code == exit_codes.CONFIG_ERROR
    assert "--nodes '0'" in capsys.readouterr().err
