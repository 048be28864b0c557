"""podrun predict: the model's parts, the CLI, and the model against published MLPerf results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.contract import exit_codes
from orchestrator.cli import main
from orchestrator.studies.predict_mlperf import RESNET50_PARAMETERS, check_results, load_results, markdown_table
from orchestrator.studies.predict_model import Fabric, allreduce_seconds, bus_bandwidth, calibrate_rate, step_seconds
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
    assert rcp_round(None)[0] == rounds[-1]


def test_allreduce_uses_nvlink_inside_a_node_and_the_hcas_between_nodes():
    size = 100e6
    one_node = allreduce_seconds(size, 8, DGX_A100, "ring")
    assert one_node == pytest.approx(2 * 7 / 8 * size / 300e9 + 2 * 7 * 1e-6)
    assert bus_bandwidth(16, DGX_A100) == 200e9
    ring, tree = (allreduce_seconds(size, 4096, DGX_A100, kind) for kind in ("ring", "tree"))
    assert tree < ring and allreduce_seconds(size, 4096, DGX_A100) == tree
    assert tree == pytest.approx(2 * 4095 / 4096 * size / 200e9 + 2 * 12 * 5e-6)


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
    hardware, rows = load_results()
    gpus = {hardware[row["hardware"]]["gpu"].split("-")[0] for row in rows}
    assert len(rows) >= 6 and {"V100", "A100", "H100"} <= gpus
    assert min(r["nodes"] for r in rows) == 1 and max(r["nodes"] for r in rows) >= 64
    checks = check_results()
    predicted = [c for c in checks if c.prediction is not None]
    assert len(predicted) >= 6
    for check in predicted:
        row, found = check.row, check.prediction
        assert found.global_batch == row["global_batch"] and found.nodes == row["nodes"]
        if row["round"] != "0.6":  # A100 and H100: within the goal
            assert abs(check.error) <= 0.20, (row["system"], check.error)
            continue
        # v0.6 (before RCPs existed) misses low, for the two reasons docs/PREDICTION.md gives:
        assert check.error < -0.20, (row["system"], check.error)
        assert found.epochs < row["epochs"] - 5  # the RCPs converge faster than v0.6's hyperparameters did
        assert found.step_s < check.measured_step_s  # the 5 ms floor is below MXNet 19.05's per-step cost
        assert check.rcp_note.startswith("round 0.6.0 predates RCPs")


def test_docs_show_the_table_the_predictor_computes():
    table = markdown_table(check_results(), check_results(floor_ms=0.0))
    assert table in (REPO / "docs" / "PREDICTION.md").read_text()


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
