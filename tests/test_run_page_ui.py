"""The run page as a reviewer sees it: a real `mlflow server`, a real run, headless Chromium.

Chromium is Debian's (``scripts/install-test-deps.sh`` installs it); Playwright only drives
it (``executable_path``), it never downloads a browser. The screenshot is kept as a test
artifact (``$PODRUN_TEST_ARTIFACTS``, default ``test-artifacts/``); with
``PODRUN_UPDATE_SCREENSHOT=1`` it also replaces the README's ``docs/images/run-page.png``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.contract import exit_codes
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.conftest import REPO
from tests.fixtures.mlflow_server import MlflowServer

pytestmark = [pytest.mark.slow, pytest.mark.registry]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
UI_TIMEOUT_MS = 120_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    # On loopback, unlike the tracking tests' server (mlflow_host): a page from http://10.x.y.z is not a
    # browser "secure context", and the UI's logged-models table never showed there (2026-12-05 runs).
    srv = MlflowServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-test-deps.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def artifact_dir() -> Path:
    folder = Path(os.environ.get("PODRUN_TEST_ARTIFACTS", REPO / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_run_page_shows_result_data_model_and_system_metrics(local_env, server, browser, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    assert main(["launch", "recipes/jobs/resnet50-tiny.yaml", "--set", "eval.target=0.6",
                 "--set", "system_metrics_interval_s=1"]) == exit_codes.SUCCESS
    assert f"MLflow: {server.uri} (experiment resnet50)" in capsys.readouterr().out
    record = list_records(local_env)[0]
    info = json.loads((Path(record.checkpoint_dir) / "run.json").read_text())
    url = f"{server.uri}/#/experiments/{info['mlflow_experiment_id']}/runs/{info['mlflow_run_id']}"

    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(url)
    description = page.get_by_text("reached top-1").first
    description.wait_for()
    assert ">= 0.6 at epoch" in description.inner_text()
    page.get_by_text("Logged models (1)").wait_for()  # the model table's header, with its one row
    page.locator('a[href="#/models/resnet50/versions/1"]').first.wait_for()  # Registered models
    page.get_by_text("digits-train (").first.wait_for()  # Datasets
    close = page.get_by_label("Close", exact=True)
    if close.count():
        close.first.click()  # the MLflow Assistant side panel
    if page.get_by_label("Expand description").count():
        page.get_by_label("Expand description").click()
    page.get_by_text("Reproduce:").wait_for()
    shot = artifact_dir() / "run-page.png"
    page.screenshot(path=str(shot), full_page=False)
    if os.environ.get("PODRUN_UPDATE_SCREENSHOT"):
        shutil.copy2(shot, REPO / "docs" / "images" / "run-page.png")

    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_text("resnet50-tiny (result/eval_top1)").first.wait_for()
    page.get_by_text("resnet50-tiny (best_metric)").first.wait_for()  # the charts render one after another
    charts = page.locator("body").inner_text()
    assert charts.index("resnet50-tiny (result/eval_top1)") < charts.index("resnet50-tiny (best_metric)")  # first

    page.get_by_role("tab", name="System metrics").click()
    page.get_by_text("system/node_0/cpu_utilization_percentage").first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot").count() >= 4  # CPU, memory, disk, network at least
    page.screenshot(path=str(artifact_dir() / "run-page-system-metrics.png"))
