"""A recipe that lives outside podrun (tests/recipes/) brings its own task and schemas, and podrun runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from jobs.contract import exit_codes
from jobs.contract.checkpoint_index import read_run_info
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.test_config import render_error

JOB = "tests/recipes/jobs/mlp-digits.yaml"


@pytest.mark.slow
def test_a_recipe_from_outside_podrun_reaches_its_target(podrun_home):
    assert main(["launch", JOB]) == exit_codes.SUCCESS
    (record,) = list_records(podrun_home)
    run_id = read_run_info(Path(record.checkpoint_dir))["mlflow_run_id"]
    run = MlflowClient(record.tracking_uri).get_run(run_id)
    assert run.data.params["task"] == "tests.recipes.mlp:MlpTask"
    assert run.data.metrics["eval_accuracy"] >= 0.9 and run.data.metrics["reached_target"] == 1.0
    assert run.data.tags["podrun.result"].startswith("reached accuracy 0.9")


@pytest.mark.fast
def test_the_task_s_own_schema_checks_its_sections(capsys, podrun_home):
    err = render_error(capsys, JOB, "--set", "model.hiden=3")
    assert "unknown key 'model.hiden'; valid keys here: hidden, layers" in err
    err = render_error(capsys, JOB, "--set", "data.val_fraction=2")
    assert "data.val_fraction" in err and "less than 1" in err


@pytest.mark.fast
@pytest.mark.parametrize("task, says", [
    ("no_such_task", "unknown task 'no_such_task': name a built-in task (image_classification, translation)"),
    ("tests.recipes.nowhere:Task", "cannot import tests.recipes.nowhere"),
    ("tests.recipes.mlp:TensorLoader", "is not a task class"),
])
def test_a_task_that_cannot_load_is_one_line(capsys, podrun_home, task, says):
    assert says in render_error(capsys, JOB, "--set", f"task={task}")
