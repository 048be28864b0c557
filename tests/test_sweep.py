"""podrun sweep + podrun report on the real two-node Slurm cluster, and the HTML report in headless Chromium."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jobs.contract import exit_codes
from orchestrator.cli import main
from orchestrator.spec.jobstore import find_record
from orchestrator.sweep import list_sweeps
from tests.conftest import REPO
from tests.fixtures.slurm import ensure_test_deps
from tests.test_slurm_backend import make_profile
from tests.waiting import wait_for_text, wait_until

pytestmark = pytest.mark.slow
PHASES = ("queued", "startup", "data_wait", "compute", "eval", "checkpoint", "other", "lost", "shutdown")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def rendered(url: str) -> tuple[int, list[list[float]]]:
    """Load ``url`` in headless Chromium: the table's row count and each image's (complete, width, height)."""
    from playwright.sync_api import sync_playwright

    ensure_test_deps("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="load")
            rows = page.locator("#scaling tbody tr").count()
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.complete ? 1 : 0, i.naturalWidth, i.naturalHeight])")
        finally:
            browser.close()
    return rows, images


def test_sweep_over_one_and_two_nodes_reaches_the_target_and_reports_in_mlflow(
        local_env, slurm_cluster, monkeypatch, tmp_path, digits_root, capsys):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf_path))
    cluster = make_profile(tmp_path, digits_root)
    # eval.target 0.3 (not the preset's 0.9): about two epochs per scale keep the test within its budget.
    assert main(["sweep", "resnet50:tiny", "--cluster-file", str(cluster), "--set", "cluster=test", "--backend",
                 "slurm", "--nodes", "1,2", "--set", "tasks_per_node=1", "--set", "eval.target=0.3"]) == 0
    out = capsys.readouterr().out
    sweep = list_sweeps(local_env)[0]
    assert [(s.nodes, s.state) for s in sweep.scales] == [(1, "SUCCEEDED"), (2, "SUCCEEDED")]
    assert "scaling report of sweep run" in out and "phases (submission to end" in out

    client = MlflowClient(sweep.tracking_uri)
    parent = client.get_run(sweep.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["podrun.kind"] == "sweep"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(int(run.data.params["world_size"]) for run in children) == [1, 2]
    for run in children:
        metrics, record = run.data.metrics, find_record(local_env, run.data.tags["job_id"])
        assert metrics["reached_target"] == 1.0 and run.data.params["backend"] == "slurm"
        # The phases of a real Slurm run add up to its wall time, submission to the end the launcher saw.
        wall = record.finished_at - record.submitted_at
        assert metrics["wall_time_s"] == pytest.approx(wall, abs=0.01) and "started_at" in record.extra
        assert abs(sum(metrics[f"phase_{name}_s"] for name in PHASES) - wall) <= 0.02 * wall
        # measured: across hosts `other` also holds the stop votes over the network, still a small part
        assert metrics["phase_other_s"] < 0.10 * metrics["time_to_train_s"], metrics["phase_other_s"]
        assert metrics["phase_queued_s"] >= 0 and metrics["phase_compute_s"] > 0

    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in ("report.html", "throughput.png", "time_to_train.png", "phases.png")} <= report
    efficiency = client.get_metric_history(parent.info.run_id, "scaling_efficiency")
    assert [m.step for m in sorted(efficiency, key=lambda m: m.step)] == [1, 2]
    predicted = client.get_metric_history(parent.info.run_id, "predicted_time_to_train_s")
    assert len(predicted) == 2 and all(m.value > 0 for m in predicted)

    # `podrun report` rebuilds it from MLflow alone; Chromium renders the page from the artifact URL.
    assert main(["report", sweep.experiment, "--tracking-uri", sweep.tracking_uri]) == 0
    assert parent.info.run_id in capsys.readouterr().out
    url = f"{parent.info.artifact_uri.rstrip('/')}/report/report.html"
    assert url.startswith("file://") and Path(url[len("file://"):]).is_file()
    rows, images = rendered(url)
    assert rows == 2
    assert len(images) == 3 and all(done and width > 0 and height > 0 for done, width, height in images), images


def test_cancel_stops_the_whole_sweep_and_resume_finishes_it(local_env, capsys):
    args = ["sweep", "resnet50:tiny", "--tasks-per-node", "1,2", "--set", "eval.target=0.05",
            "--set", "train.log_every=5"]
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        sweep = wait_until(lambda: next((s for s in list_sweeps(local_env) if s.scales[0].job_id), None),
                           "the first scale's job", 120)
        first = find_record(local_env, sweep.scales[0].job_id)
        wait_for_text(Path(first.job_dir) / "logs" / "rank0.log", "[train] epoch 1/")
        assert main(["cancel", sweep.sweep_id]) == 0
        assert "no more scales" in capsys.readouterr().out
        assert driver.wait(timeout=300) == 3
    finally:
        if driver.poll() is None:
            driver.kill()
    stopped = list_sweeps(local_env)[0]
    assert stopped.cancelled and stopped.scales[0].state == "CANCELLED" and not stopped.scales[1].job_id

    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {Path(first.checkpoint_dir).name}" in out
    done = list_sweeps(local_env)[0]
    assert done.sweep_id == sweep.sweep_id and [s.state for s in done.scales] == ["SUCCEEDED", "SUCCEEDED"]
    client = MlflowClient(done.tracking_uri)
    children = client.search_runs([client.get_run(done.parent_run_id).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{done.parent_run_id}'")
    attempts = sorted(int(run.data.tags["attempts"]) for run in children)
    assert attempts == [1, 2]  # the cancelled scale went on in its own run


def test_a_scale_that_cannot_run_stops_the_sweep_before_anything_starts(local_env, capsys):
    assert main(["sweep", "resnet50:tiny", "--nodes", "1,2"]) == exit_codes.CONFIG_ERROR
    assert "asks for 2 nodes but profile 'local' has 1" in capsys.readouterr().err
    assert main(["sweep", "resnet50:tiny", "--tasks-per-node", "1,x"]) == exit_codes.CONFIG_ERROR
    assert "--tasks-per-node '1,x'" in capsys.readouterr().err
    assert list_sweeps(local_env) == []
    code = main(["report", "no-such-experiment", "--tracking-uri", f"sqlite:///{local_env / 'm.db'}"])
    assert code == exit_codes.CONFIG_ERROR
    assert "neither a run id nor an experiment" in capsys.readouterr().err
