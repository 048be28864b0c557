"""Shutdown frees the devices: the model and the run page go to MLflow once the ranks have exited.

A rank's MLflow sender sends the records up to the run's ``end`` and keeps the ``model`` and
``run_page`` records for a finisher outside the allocation: on the local backend the sender
itself, which outlives its rank; elsewhere ``podrun launch``, the Ray driver or ``podrun sync``.
``device_release_s`` (``run_stop`` to the last rank's exit) is recorded, and ``podrun status``
says "registering" until the records are sent. The Slurm and Ray paths are checked in their
own tests (tests/test_slurm_backend.py, tests/test_ray_backend.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from jobs.contract.checkpoint_index import read_run_info, update_run_info
from jobs.tracking.sender import replay_spool
from jobs.tracking.spool import LAUNCHER_FILE, Spool, registering, spool_note, with_registering_note
from jobs.tracking.tracker import Tracker
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.waiting import wait_state, wait_until

REPO = Path(__file__).resolve().parent.parent
MODEL_TAG = "podrun.model"


def model_record(tmp_path: Path) -> dict:
    """A ``model`` record whose checkpoint is gone: the finisher only tags the run with why (no torch.export)."""
    return {"kind": "model", "checkpoint": str(tmp_path / "gone.pt"), "inputs": str(tmp_path / "inputs.npz"),
            "task": "image_classification", "model_config": {}, "name": "m", "max_model_mb": 1, "result": "r"}


def meta(spool: Path) -> dict:
    return json.loads((spool / "meta.json").read_text())


@pytest.mark.fast
def test_a_rank_s_sender_keeps_the_model_for_after_the_ranks(tmp_path):
    uri, spool, ckpt = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "spool", tmp_path / "ckpt"
    tracker = Tracker(uri, "e", spool, run_name="r", background=True, run_info_dir=ckpt)
    tracker.log_metrics({"train_loss": 1.0}, step=1)
    assert tracker.finish("FINISHED", (model_record(tmp_path),))  # waits for the records up to the end only
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] == 1.0
    assert MODEL_TAG not in run.data.tags  # kept: not sent from the rank's side
    assert registering((spool / "meta.json").read_text()) and not meta(spool).get("done")

    update_run_info(ckpt, phases_at=1000.0)  # run_stop, as rank 0 records it
    assert replay_spool(spool, released_at=1000.5, run_info_dir=ckpt) == 2  # the model, then device_release_s
    run = client.get_run(tracker.run_id)
    assert run.data.tags[MODEL_TAG].startswith("not logged: the checkpoint") and run.data.metrics[
        "device_release_s"] == 0.5
    assert meta(spool)["done"] and not registering((spool / "meta.json").read_text())
    assert replay_spool(spool, released_at=2000.0, run_info_dir=ckpt) == 0  # once: not sent or measured again


@pytest.mark.fast
def test_the_sender_shares_the_start_up_and_yields_to_the_ranks_at_run_start(tmp_path):
    """MLflow's import overlaps the ranks' start-up at their priority; from run_start the steps come first."""
    uri, spool = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "spool"
    tracker = Tracker(uri, "e", spool, run_name="r", background=True, run_info_dir=tmp_path / "ckpt")
    sender_pid, mine = tracker._process.pid, os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, sender_pid) == mine
    tracker.yield_to_ranks()
    assert os.getpriority(os.PRIO_PROCESS, sender_pid) == min(mine + 10, 19)
    tracker.log_metrics({"train_loss": 1.0}, step=1)
    assert tracker.finish("FINISHED")
    assert MlflowClient(uri).get_run(tracker.run_id).data.metrics["train_loss"] == 1.0


@pytest.mark.fast
def test_another_node_s_monitor_ends_with_its_rank_even_before_it_has_begun_monitoring():
    """Starting MLflow's monitor takes seconds, and on Slurm the step lasts until the monitor exits."""
    child = textwrap.dedent("""
        import sys, time
        from jobs.tracking.system_metrics import RankWatch
        watch = RankWatch(0)
        if sys.argv[1] == "rank ends first":
            time.sleep(120)  # stands in for start_monitor: MLflow's import and its store
        watch.monitoring()
        print("monitoring", flush=True)
        watch.wait()
        print("stopped", flush=True)
    """)
    for case, said in (("rank ends first", ""), ("monitor starts first", "monitoring\nstopped\n")):
        proc = subprocess.Popen([sys.executable, "-c", child, case], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
        try:
            if said:
                assert proc.stdout.readline() == "monitoring\n"
            proc.stdin.close()  # the rank exits
            proc.stdin = None
            out = "monitoring\n" * bool(said) + proc.communicate(timeout=60)[0]
        finally:
            proc.kill()
        assert (out, proc.returncode) == (said, 0), case


@pytest.mark.fast
def test_registering_a_model_leaves_the_launcher_s_mlflow_environment_as_it_was(tmp_path, monkeypatch):
    """The launcher registers models (after a Slurm job, in a sweep): later jobs and children keep their store."""
    import mlflow

    from jobs.tracking.model_registry import fluent_target

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = MlflowClient(uri).create_experiment("e")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://users-own-server:5000")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    before = mlflow.get_tracking_uri()
    with fluent_target(uri, experiment):
        assert mlflow.get_tracking_uri() == uri and os.environ["MLFLOW_EXPERIMENT_ID"] == experiment
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://users-own-server:5000"
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ and mlflow.get_tracking_uri() == before


@pytest.mark.fast
def test_on_a_cluster_the_rank_waits_for_its_sender_a_bounded_time_and_a_finisher_sends_the_rest(tmp_path):
    uri, spool, ckpt = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "spool", tmp_path / "ckpt"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id  # a resumed run: the store exists
    tracker = Tracker(uri, "e", spool, run_id=run_id, background=True, run_info_dir=ckpt, release_wait_s=0.1)
    tracker.log_metrics({"train_loss": 1.0}, step=1)
    began = time.monotonic()
    # the sender is still importing MLflow: it is stopped, and the rank goes
    assert not tracker.finish("FINISHED", (model_record(tmp_path),))
    assert time.monotonic() - began < 5
    assert registering((spool / "meta.json").read_text())
    assert spool_note(spool, "job-1", "reached target").endswith("podrun sync job-1 sends them")

    update_run_info(ckpt, phases_at=1000.0)
    assert replay_spool(spool, released_at=1000.25, run_info_dir=ckpt) >= 4  # start, metrics, end, model, release
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] == 1.0
    assert run.data.metrics["device_release_s"] == 0.25 and run.data.tags[MODEL_TAG].startswith("not logged")
    assert meta(spool)["done"]


@pytest.mark.fast
def test_a_sender_that_has_not_created_the_run_yet_is_not_stopped(tmp_path):
    """Stopped while it creates a sqlite store's tables, it would leave a store no finisher can open."""
    uri, spool = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "spool"
    tracker = Tracker(uri, "e", spool, run_name="r", background=True, run_info_dir=tmp_path / "ckpt",
                      release_wait_s=0.1)
    tracker.log_metrics({"train_loss": 1.0}, step=1)
    tracker.finish("FINISHED", (model_record(tmp_path),))
    run_id = meta(spool)["run_id"]  # it returned only once the run existed
    assert replay_spool(spool, released_at=None, run_info_dir=None) >= 0
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


@pytest.mark.fast
def test_how_long_rank_0_waits_for_its_sender_depends_on_who_finishes_the_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from jobs.tracking.run_tracking import release_wait_s
    from jobs.tracking.tracker import RELEASE_WAIT_S, SENDER_DRAIN_TIMEOUT_S

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    job = SimpleNamespace(backend="slurm", job_dir=str(tmp_path))
    assert release_wait_s(job) == SENDER_DRAIN_TIMEOUT_S  # detached: nobody else sends the records up to the end
    Spool(tmp_path / "mlflow-spool").attach_launcher()
    assert release_wait_s(job) == RELEASE_WAIT_S  # the attached launcher sends the rest after the allocation
    assert release_wait_s(SimpleNamespace(backend="ray", job_dir=str(tmp_path))) == 0.0  # the driver always does
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # Ray inside an allocation: its driver leaves it to the launcher
    assert release_wait_s(SimpleNamespace(backend="ray", job_dir=str(tmp_path))) == RELEASE_WAIT_S
    assert release_wait_s(SimpleNamespace(backend="local", job_dir=str(tmp_path))) == SENDER_DRAIN_TIMEOUT_S


RANK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from jobs.contract.checkpoint_index import update_run_info
    from jobs.tracking.tracker import Tracker

    uri, spool, ckpt, model = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), eval(sys.argv[4])
    tracker = Tracker(uri, "e", spool, run_name="r", background=True, run_info_dir=ckpt,
                      sender_args=("--finish-here",))
    tracker.log_metrics({"train_loss": 1.0}, step=1)
    time.sleep(1)
    update_run_info(ckpt, phases_at=time.time())
    began = time.monotonic()
    assert tracker.finish("FINISHED", (model,))
    print(f"finish took {time.monotonic() - began:.3f} s", flush=True)
""")


@pytest.mark.fast
def test_a_sender_that_finishes_here_outlives_its_rank(tmp_path):
    uri, spool, ckpt = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "spool", tmp_path / "ckpt"
    rank = subprocess.run([sys.executable, "-c", RANK, uri, str(spool), str(ckpt), repr(model_record(tmp_path))],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    exited = time.time()
    assert rank.returncode == 0, rank.stderr
    assert float(rank.stdout.split()[2]) < 0.5  # the rank does not wait for MLflow at all
    wait_until(lambda: meta(spool).get("done"), "the sender to send the rest", 120, every=0.1)
    assert meta(spool)["done_at"] >= exited  # sent after the rank had exited
    run = MlflowClient(uri).get_run(meta(spool)["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] == 1.0
    assert run.data.tags[MODEL_TAG].startswith("not logged: the checkpoint")
    release = run.data.metrics["device_release_s"]
    assert release == meta(spool)["device_release_s"] and 0 <= release < 30


@pytest.mark.fast
def test_status_says_registering_until_the_records_are_sent(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.write_meta({"tracking_uri": "sqlite:///x.db", "registering": True})
    detail = spool_note(spool.root, "job-1", "reached target")
    assert detail == ("reached target; registering: the model and run page wait to go to MLflow (the ranks have "
                      "exited); podrun sync job-1 sends them")
    with spool.finishing():  # a finisher at work
        busy = spool_note(spool.root, "job-1", detail)  # an older note is replaced, not repeated
    assert busy == "reached target; registering: the model and run page are going to MLflow (the ranks have exited)"
    spool.write_meta({"tracking_uri": "sqlite:///x.db", "registering": True, "done": True})
    assert spool_note(spool.root, "job-1", busy) == "reached target"
    assert with_registering_note("SUCCEEDED", None, "job-1") == "SUCCEEDED"  # no spool (over SSH: unreadable)


@pytest.mark.slow
@pytest.mark.registry
def test_a_detached_job_frees_its_ranks_then_registers_and_podrun_sync_ends_a_killed_registration(local_env,
                                                                                                   capsys):
    job = ["resnet50:tiny", "--set", "tasks_per_node=1", "--set", "train.epochs=1", "--set", "eval.target=0.01",
           "--set", "data.backend=synthetic", "--set", "data.synthetic_samples=128"]
    assert main(["launch", *job, "--detach"]) == 0
    (record,) = list_records(local_env)
    spool = Path(record.job_dir) / "mlflow-spool"
    line = wait_state(record.job_id, capsys, timeout=300, settle=False)  # the ranks have exited ...
    assert "SUCCEEDED" in line and "registering: the model and run page are going to MLflow" in line, line
    assert not (spool / LAUNCHER_FILE).exists()  # detached: nobody adds phases
    # ... while rank 0's sender exports and registers the model (past the store's set-up: the run exists, and
    # the records up to the run's end are marked sent or kept). Kill it: `podrun sync` finishes the job.
    sender = wait_until(lambda: sender_pid(spool), "rank 0's sender", 30, every=0.1)
    wait_until(lambda: meta(spool).get("run_id") and meta(spool).get("registering"), "the run to exist", 120,
               every=0.1)
    os.kill(sender, signal.SIGKILL)
    wait_until(lambda: not Spool(spool).busy(), "the finish lock to be free", 30, every=0.1)
    main(["status", record.job_id])
    assert f"podrun sync {record.job_id} sends them" in capsys.readouterr().out
    assert main(["sync", record.job_id]) == 0
    assert "kept record(s)" in capsys.readouterr().out

    record = list_records(local_env)[0]
    info = read_run_info(Path(record.checkpoint_dir))
    client = MlflowClient(record.tracking_uri)
    run = client.get_run(info["mlflow_run_id"])
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.creation_timestamp / 1000 > record.finished_at  # registered after the last rank exited
    assert run.data.tags[MODEL_TAG].startswith("registered as resnet50 version")
    assert run.data.tags["mlflow.note.content"].startswith("**reached top-1")  # the run page, complete
    assert run.data.metrics["device_release_s"] == pytest.approx(record.finished_at - info["phases_at"], abs=0.01)
    main(["status", record.job_id])
    assert "registering" not in capsys.readouterr().out


def sender_pid(spool: Path) -> int | None:
    """The pid of the MLflow sender of ``spool`` (by its command line), if it runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"jobs.tracking.sender" in argv and str(spool).encode() in argv:
            return int(entry.name)
    return None
