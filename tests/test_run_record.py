"""Where a job's MLflow record goes (every backend, one rule) and the command line that reproduces it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.tracking.store_uri import absolute_store_uri, display_uri, local_store_path
from orchestrator.errors import ConfigError
from orchestrator.spec.resolve import load_job
from orchestrator.spec.run_record import check_outlives, reproduce_command
from tests.test_config import render_error

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast


@pytest.fixture
def cluster_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, podrun_home: Path) -> Path:
    """Two Slurm profiles of 2 nodes: one with a shared state_dir, one with nothing shared."""
    profiles = {
        "shared": {"scheduler": "slurm", "nodes": 2, "gpus_per_node": 0, "state_dir": str(tmp_path / "shared")},
        "bare": {"scheduler": "slurm", "nodes": 2, "gpus_per_node": 0},
        "served": {"scheduler": "slurm", "nodes": 2, "gpus_per_node": 0,
                   "mlflow": {"tracking_uri": "http://mlflow.example:5000"}},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"profiles": profiles}))
    monkeypatch.setenv("PODRUN_CLUSTER_FILE", str(path))
    return path


def test_default_store_is_under_the_shared_state_dir(cluster_file, tmp_path):
    plan = load_job("resnet50:tiny", ["cluster=shared", "nodes=2"])
    assert plan.job.tracking_uri == f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    assert plan.job.job_dir.startswith(str(tmp_path / "shared"))


def test_the_environment_and_the_profile_name_the_store(cluster_file, monkeypatch, tmp_path):
    assert load_job("resnet50:tiny", ["cluster=served", "nodes=2"]).job.tracking_uri == "http://mlflow.example:5000"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel/mlflow.db")
    # relative to the launcher's folder, written absolute: a rank's working directory is another one
    assert load_job("resnet50:tiny", ["cluster=bare", "nodes=2"]).job.tracking_uri == \
        f"sqlite:///{tmp_path / 'rel' / 'mlflow.db'}"


def test_multi_node_job_without_a_shared_store_stops_before_training(cluster_file, capsys):
    err = render_error(capsys, "resnet50:tiny", "--set", "cluster=bare", "--set", "nodes=2")
    assert "2-node job needs an MLflow store" in err and "MLFLOW_TRACKING_URI" in err and "state_dir" in err
    load_job("resnet50:tiny", ["cluster=bare", "nodes=1"])  # one node: the launcher's own store is fine


def test_a_store_inside_the_ray_working_copy_is_refused(cluster_file, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'shared' / 'x.db'}")
    plan = load_job("resnet50:tiny", ["cluster=shared", "nodes=2"])
    check_outlives(plan, tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="temporary working directory.*state_dir"):
        check_outlives(plan, tmp_path / "shared")


def test_reproducing_command_line_holds_no_secret(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k3y-value-that-is-long")
    command = reproduce_command("resnet50:tiny", ["train.epochs=3", "profile.env.HF_TOKEN=hf_x",
                                                  "profile.env.NOTE=k3y-value-that-is-long"], backend="ray")
    assert command == ("podrun launch resnet50:tiny --set train.epochs=3 --set 'profile.env.HF_TOKEN=<redacted>' "
                       "--set 'profile.env.NOTE=<redacted>' --backend ray")
    plan = load_job("resnet50:tiny", ["train.epochs=3"])
    assert plan.job.command == "podrun launch resnet50:tiny --set train.epochs=3"


def test_store_uris():
    assert local_store_path("sqlite:////a/b.db?timeout=5") == Path("/a/b.db")
    assert local_store_path("http://h:5000") is None
    assert absolute_store_uri("sqlite:///x.db?timeout=5") == f"sqlite:///{Path('x.db').resolve()}?timeout=5"
    assert absolute_store_uri("http://h:5000") == "http://h:5000"
    assert display_uri("https://bob:pa55@mlflow.example:8443/x") == "https://bob:***@mlflow.example:8443/x"
    assert display_uri("http://mlflow.example") == "http://mlflow.example"


@pytest.mark.registry
def test_registry_is_on_unless_the_job_turns_it_off(podrun_home):
    assert load_job("resnet50:tiny").job.registry.enabled
    assert not load_job("resnet50:tiny", ["registry=false"]).job.registry.enabled
    limited = load_job("resnet50:tiny", ["registry.max_model_mb=5"]).job.registry
    assert limited.enabled and limited.max_model_mb == 5
