"""jobs.tracking.tracker against a real sqlite store and a real `mlflow server` that comes and goes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from jobs.contract.secret_filter import sanitize_key, secret_reason
from jobs.tracking.spool import SpoolError
from jobs.tracking.tracker import Tracker, replay_spool
from tests.fixtures.mlflow_server import MlflowServer


@pytest.fixture
def server(tmp_path: Path, mlflow_host) -> Iterator[MlflowServer]:
    """A server that is NOT started yet: its port refuses connections until .start()."""
    srv = MlflowServer(tmp_path, mlflow_host)
    yield srv
    srv.stop()


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def log_sample_run(tracker: Tracker, artifact: Path) -> None:
    tracker.log_params({"optim": {"lr": 0.256, "name": "sgd"}, "epochs": 3})
    tracker.set_tags({"podrun.job": "j1"})
    for step in range(5):
        tracker.log_metrics({"train/loss": 2.0 - step * 0.1, "lr": 0.1}, step=step)
    tracker.log_artifact(artifact, "logs")


def assert_sample_run(client: MlflowClient, run_id: str) -> None:
    run = client.get_run(run_id)
    assert run.data.params == {"optim.lr": "0.256", "optim.name": "sgd", "epochs": "3"}
    assert run.data.tags["podrun.job"] == "j1"
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    assert history[-1].value == pytest.approx(1.6)
    assert [a.path for a in client.list_artifacts(run_id, "logs")] == ["logs/notes.txt"]
    local = client.download_artifacts(run_id, "logs/notes.txt")
    assert Path(local).read_text() == "epoch 1 done\n"


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "out" / "notes.txt"
    path.parent.mkdir()
    path.write_text("epoch 1 done\n")
    return path


# --------------------------------------------------------------------------- sqlite store


@pytest.mark.fast
def test_sqlite_run_reads_back(tmp_path: Path, sqlite_uri: str, artifact: Path) -> None:
    tracker = Tracker(sqlite_uri, "resnet50", tmp_path / "spool", run_name="first")
    assert tracker.run_id
    log_sample_run(tracker, artifact)
    assert tracker.finish("FINISHED") is True
    client = MlflowClient(sqlite_uri)
    assert_sample_run(client, tracker.run_id)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    experiment = client.get_experiment_by_name("resnet50")
    # artifacts next to the db file, not in a cwd-relative ./mlruns
    assert experiment.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()
    assert (tmp_path / "store" / "mlartifacts" / tracker.run_id / "artifacts/logs/notes.txt").exists()
    assert json.loads((tmp_path / "spool" / "meta.json").read_text())["done"] is True


@pytest.mark.fast
def test_secrets_are_dropped(
    tmp_path: Path, sqlite_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = "f3a9c1d2e4b5a6978877665544332211"
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    tracker = Tracker(sqlite_uri, "secrets", tmp_path / "spool")
    tracker.log_params({
        "hf_token": "abc", "DB_PASSWORD": "hunter2", "aws": {"secret_access_key": "x"},
        "api_key": "k", "ApiKey": "k", "credentials_file": "/c", "private_key": "p",
        "Authorization": "Bearer x", "ray_env": f"RAY_AUTH_TOKEN={token}",
        "github": "ghp_" + "A1b2" * 9, "db_url": "postgresql://bob:pa55@db:5432/x",
        "tokenizer": "spm", "max_tokens": 128, "author": "alice", "lr": 0.1,
    })  # fmt: skip
    tracker.set_tags({"auth_header": "x", "note": "fine"})
    assert tracker.finish("FINISHED")
    run = MlflowClient(sqlite_uri).get_run(tracker.run_id)
    assert run.data.params == {"tokenizer": "spm", "max_tokens": "128", "author": "alice", "lr": "0.1"}
    assert run.data.tags["note"] == "fine" and "auth_header" not in run.data.tags
    assert "DB_PASSWORD" in caplog.text and "hunter2" not in caplog.text
    assert token not in caplog.text
    spool_text = (tmp_path / "spool" / "records.jsonl").read_text()
    assert token not in spool_text and "hunter2" not in spool_text


@pytest.mark.fast
def test_secret_reason_keeps_ordinary_values() -> None:
    assert secret_reason("git_sha", "0123456789abcdef0123456789abcdef01234567") is None
    assert secret_reason("path", "/data/imagenet/ILSVRC2012/train") is None
    assert secret_reason("x", "Ab3dEf6hIj9kLm2nOp5qRs8tUv") is not None  # random token
    assert secret_reason("cfg", "-----BEGIN RSA PRIVATE KEY-----\n...") is not None


@pytest.mark.fast
def test_long_values_and_bad_keys(tmp_path: Path, sqlite_uri: str) -> None:
    tracker = Tracker(sqlite_uri, "limits", tmp_path / "spool")
    tracker.log_params({"notes": "x" * 7000, "bad key!*": 1, "a//b/./c/": 2})
    tracker.log_metrics({"loss@rank0": 1.5, "not_a_number": object()}, step=1)  # type: ignore[dict-item]
    assert tracker.finish("FINISHED")
    run = MlflowClient(sqlite_uri).get_run(tracker.run_id)
    assert len(run.data.params["notes"]) == 6000
    assert run.data.params["bad key__"] == "1"
    assert run.data.params["a/b/c"] == "2"
    assert run.data.metrics == {"loss_rank0": 1.5}
    assert sanitize_key("../x") == "x"


@pytest.mark.fast
def test_resume_continues_the_same_run(tmp_path: Path, sqlite_uri: str) -> None:
    first = Tracker(sqlite_uri, "resume", tmp_path / "spool-1")
    first.log_params({"lr": 0.1})
    first.log_metrics({"loss": 2.0}, step=1)
    assert first.finish("KILLED")  # preempted
    client = MlflowClient(sqlite_uri)
    assert client.get_run(first.run_id).info.status == "KILLED"

    second = Tracker(sqlite_uri, "resume", tmp_path / "spool-2", run_id=first.run_id)
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    second.log_params({"lr": 0.1, "resumed_from_epoch": 3})  # same value again is fine
    second.log_params({"lr": 0.2})  # a changed value is rejected by MLflow: warned, not raised
    second.log_metrics({"loss": 1.0}, step=2)
    assert second.finish("FINISHED")
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "resumed_from_epoch": "3"}
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == [1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.fast
def test_same_spool_resumes_without_run_id(tmp_path: Path, sqlite_uri: str) -> None:
    first = Tracker(sqlite_uri, "resume", tmp_path / "spool")
    first.finish("KILLED")
    second = Tracker(sqlite_uri, "resume", tmp_path / "spool")
    assert second.run_id == first.run_id
    assert second.finish("FINISHED")


# --------------------------------------------------------------------------- server outage


def test_unreachable_server_keeps_everything_then_replays(
    tmp_path: Path, server: MlflowServer, artifact: Path
) -> None:
    spool = tmp_path / "spool"
    began = time.monotonic()
    tracker = Tracker(server.uri, "outage", spool, run_name="offline")
    log_sample_run(tracker, artifact)
    assert tracker.finish("FINISHED") is False
    assert time.monotonic() - began < 20
    assert tracker.run_id is None
    artifact.unlink()  # the spool's own copy must be what gets uploaded

    records = [json.loads(line) for line in (spool / "records.jsonl").read_text().splitlines()]
    kinds = [record["kind"] for record in records]
    assert kinds == ["params", "tags"] + ["metrics"] * 5 + ["artifact", "end"]
    assert [r["step"] for r in records if r["kind"] == "metrics"] == [0, 1, 2, 3, 4]
    assert not (spool / "sent.jsonl").exists()
    assert list((spool / "artifacts").rglob("notes.txt"))

    with pytest.raises(SpoolError, match="still kept"):
        replay_spool(spool)  # still down: says so, sends nothing

    server.start()
    assert replay_spool(spool) == len(records)
    meta = json.loads((spool / "meta.json").read_text())
    assert meta["done"] is True and meta["run_id"]
    client = MlflowClient(server.uri)
    assert_sample_run(client, meta["run_id"])
    run = client.get_run(meta["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "offline"

    assert replay_spool(spool) == 0  # nothing is sent twice
    assert len(client.get_metric_history(meta["run_id"], "train/loss")) == 5


def test_server_comes_back_during_the_run(
    tmp_path: Path, server: MlflowServer, artifact: Path
) -> None:
    tracker = Tracker(server.uri, "flaky", tmp_path / "spool", retry_interval_s=1.0)
    tracker.log_params({"lr": 0.1})
    tracker.log_metrics({"loss": 3.0}, step=0)
    tracker.log_artifact(artifact)
    assert tracker.run_id is None and tracker.pending == 3

    server.start()
    time.sleep(1.1)  # past the backoff window: the next call flushes everything
    tracker.log_metrics({"loss": 2.0}, step=1)
    assert tracker.pending == 0
    assert tracker.run_id
    client = MlflowClient(server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"lr": "0.1"}
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == [3.0, 2.0]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["notes.txt"]
    assert tracker.finish("FINISHED") is True
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_backoff_skips_attempts_inside_the_window(tmp_path: Path, server: MlflowServer) -> None:
    tracker = Tracker(server.uri, "backoff", tmp_path / "spool", retry_interval_s=3600)
    server.start()
    tracker.log_metrics({"loss": 1.0}, step=0)  # inside the window: not even tried
    assert tracker.run_id is None and tracker.pending == 1
    assert tracker.finish("FINISHED") is True  # finish() always tries once more
    assert MlflowClient(server.uri).get_run(tracker.run_id).info.status == "FINISHED"


@pytest.mark.fast
def test_replay_of_a_missing_spool_says_so(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="no tracking spool"):
        replay_spool(tmp_path / "nothing-here")
