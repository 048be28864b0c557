"""Bad input to every file podrun reads: one line naming the file and the problem, never a traceback.

Job specs, recipes, cluster files, ``--set`` values, checkpoints, the MLflow spool and job
records each get garbage: binary bytes, other encodings, YAML that nests or refers to itself
without end, huge files and duplicate keys (see the table in docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jobs.contract import exit_codes
from jobs.contract.errors import CheckpointError
from jobs.rank.checkpoint import load_resumable
from orchestrator.cli import main

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
# (what, bytes of the file, what the one-line error must say)
BAD_FILES = [
    ("binary", bytes(range(256)) * 4, "binary data"),
    ("utf16", "name: x\nrecipe: resnet50\n".encode("utf-16"), "UTF-16 text"),
    ("latin1", "name: caf\xe9\nrecipe: resnet50\n".encode("latin-1"), "not UTF-8 text (byte 0xE9 on line 1)"),
    ("control", b"name: x\x07\n", "control characters are not allowed"),
    ("deep", b"[" * 200_000, "nest"),
    ("laughs", LAUGHS.encode(), "billion laughs"),
    ("self", b"name: &n [x, *n]\n", "refers to the mapping or list that holds it"),
    ("huge", b"# padding\n" * 150_000, "too big for a podrun config"),
    ("duplicate", b"name: x\nrecipe: resnet50\nnodes: 1\nnodes: 2\n", "duplicate key 'nodes'"),
    ("list", b"- name: x\n", "expected a mapping"),
]


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str], code: int = exit_codes.CONFIG_ERROR) -> str:
    """Run podrun; assert it exits ``code`` with a single ``podrun: error:`` line; return the line."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("podrun: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("what,data,expected", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_job_spec(tmp_path, capsys, podrun_home, what, data, expected):
    spec = tmp_path / "job.yaml"
    spec.write_bytes(data)
    began = time.monotonic()
    err = one_line_error(capsys, ["render", str(spec)])
    assert time.monotonic() - began < 10
    assert str(spec) in err and expected in err


@pytest.mark.parametrize("what,data,expected", BAD_FILES[:-1], ids=[case[0] for case in BAD_FILES[:-1]])
def test_bad_cluster_file(tmp_path, capsys, podrun_home, what, data, expected):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_bytes(data)
    err = one_line_error(capsys, ["render", "resnet50:tiny", "--cluster-file", str(cluster)])
    assert str(cluster) in err and expected in err


def test_duplicate_keys_in_a_recipe_and_a_cluster_file(tmp_path, capsys, podrun_home):
    recipe = tmp_path / "myrecipe.yaml"
    recipe.write_text("name: myrecipe\ntrain:\n  epochs: 3\n  batch_size: 8\n  epochs: 5\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: x\nrecipe: {recipe}\n")
    err = one_line_error(capsys, ["render", str(spec)])
    assert str(recipe) in err and "line 5" in err and "duplicate key 'epochs'" in err
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("profiles:\n  local: {scheduler: local}\n  local: {scheduler: slurm}\n")
    err = one_line_error(capsys, ["render", "resnet50:tiny", "--cluster-file", str(cluster)])
    assert "duplicate key 'local'" in err


def test_yaml_merge_keys_still_override(tmp_path, podrun_home):
    from jobs.contract.config_io import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text("base: &b {a: 1, b: 2}\nc:\n  <<: *b\n  a: 5\n")
    assert read_yaml(path)["c"] == {"a": 5, "b": 2}


@pytest.mark.parametrize("value,expected", [
    ("{a: 1, a: 2}", "duplicate key 'a'"),
    ("&a [x, *a]", "refers to the mapping or list that holds it"),
])
def test_bad_set_values(capsys, podrun_home, value, expected):
    err = one_line_error(capsys, ["render", "resnet50:tiny", "--set", f"train.cpu_threads={value}"])
    assert "--set train.cpu_threads" in err and expected in err


def test_not_a_regular_file(capsys, podrun_home, tmp_path):
    err = one_line_error(capsys, ["render", "resnet50:tiny", "--cluster-file", "/dev/zero"])
    assert "/dev/zero: not a regular file" in err
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    assert "not a regular file" in one_line_error(capsys, ["render", str(folder)])


def test_usage_error_exit_code_differs_from_not_reached(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["launch"])
    assert exit_info.value.code == exit_codes.CONFIG_ERROR != exit_codes.NOT_REACHED
    capsys.readouterr()


# --------------------------------------------------------------------------- checkpoints


def fake_checkpoints(home: Path, job_id: str, contents: list[bytes], checksums: bool) -> Path:
    folder = home / "checkpoints" / "resnet50-tiny" / job_id
    folder.mkdir(parents=True)
    for step, data in enumerate(contents, start=1):
        path = folder / f"ckpt-{step:09d}.pt"
        path.write_bytes(data)
        if checksums:
            (folder / f"{path.name}.sha256").write_text(f"{'0' * 64}  {path.name}\n")
    return folder


def test_resume_with_only_damaged_checkpoints_is_refused_before_launch(capsys, podrun_home):
    folder = fake_checkpoints(podrun_home, "old-job", [b"PK\x03\x04 truncated", b"\x00" * 64], checksums=True)
    err = one_line_error(capsys, ["launch", "resnet50:tiny", "--resume", "old-job"])
    assert f"no valid checkpoint in {folder}" in err
    assert "ckpt-000000002.pt: sha256" in err and "ckpt-000000001.pt: sha256" in err
    assert not list(podrun_home.glob("jobs/*/job.json"))  # refused before anything was submitted


def test_garbage_checkpoints_without_checksums_give_one_error(tmp_path, capsys):
    folder = fake_checkpoints(tmp_path, "legacy", [b"not a zip", bytes(range(256))], checksums=False)
    with pytest.raises(CheckpointError) as error:
        load_resumable(folder)
    message = str(error.value)
    assert "\n" not in message and "no valid checkpoint" in message and "not a readable checkpoint" in message
    assert "ckpt-000000001.pt" in message and "ckpt-000000002.pt" in message


# --------------------------------------------------------------------------- the MLflow spool and job records


def make_record(home: Path, job_id: str) -> Path:
    from orchestrator.spec.jobstore import JobRecord

    job_dir = home / "jobs" / job_id
    JobRecord(job_id=job_id, name="resnet50-tiny", backend="local", recipe="resnet50", cluster="local",
              job_dir=str(job_dir), checkpoint_dir=str(home / "ck"), tracking_uri="sqlite:///x.db",
              world_size=2, state="SUCCEEDED").save()
    return job_dir


def test_damaged_spool_meta_is_one_line(capsys, podrun_home):
    job_dir = make_record(podrun_home, "job-a")
    spool = job_dir / "mlflow-spool"
    spool.mkdir()
    for garbage in (b"\xff\xfe\x00garbage", b"[1, 2, 3]"):
        (spool / "meta.json").write_bytes(garbage)
        err = one_line_error(capsys, ["sync", "job-a"])
        assert "meta.json" in err


def test_spool_with_garbage_lines_sends_the_good_records(capsys, podrun_home, tmp_path):
    from mlflow import MlflowClient

    job_dir = make_record(podrun_home, "job-b")
    spool = job_dir / "mlflow-spool"
    spool.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (spool / "meta.json").write_text(json.dumps({"tracking_uri": uri, "experiment": "garbage", "done": False}))
    good = [{"seq": 1, "kind": "params", "params": {"lr": "0.1"}},
            {"seq": 2, "kind": "metrics", "metrics": {"loss": 2.0}, "step": 1, "timestamp": 1000},
            {"seq": 5, "kind": "metrics", "metrics": {"loss": 1.0}, "step": 2, "timestamp": 2000},
            {"seq": 6, "kind": "end", "status": "FINISHED"}]
    lines = [json.dumps(good[0]).encode(), json.dumps(good[1]).encode(), b"\x00\xff\xfe binary",
             json.dumps({"seq": 3, "kind": "metrics"}).encode(), b'{"seq": 4, "kind": "params", "par',
             "caf\xe9".encode("latin-1"), json.dumps(good[2]).encode(), json.dumps(good[3]).encode()]
    (spool / "records.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["sync", "job-b"]) == 0
    assert "sent 4 kept record(s)" in capsys.readouterr().out
    meta = json.loads((spool / "meta.json").read_text())
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(meta["run_id"], "loss")] == [1, 2]
    assert client.get_run(meta["run_id"]).info.status == "FINISHED"


KILLED_MID_MIGRATION = """
import os, sys
from alembic.ddl.impl import DefaultImpl

def killed(self, table, *args, **kwargs):  # the copy is made, the original not yet dropped: SIGKILL lands here
    os._exit(9)

DefaultImpl.drop_table = killed
from mlflow import MlflowClient
MlflowClient(sys.argv[1])  # a fresh store: MLflow creates its tables, then upgrades them in batches
"""


def test_a_sender_killed_while_creating_a_new_store_leaves_none_and_the_next_one_creates_it(tmp_path):
    """podrun creates a new sqlite store beside it and links it into place: a kill mid-way leaves no store."""
    import subprocess
    import sys

    from jobs.tracking.mlflow_send import new_client

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    script = KILLED_MID_MIGRATION.replace("from mlflow import MlflowClient\nMlflowClient(sys.argv[1])",
                                          "from jobs.tracking.mlflow_send import new_client\nnew_client(sys.argv[1])")
    killed = subprocess.run([sys.executable, "-c", script, uri], capture_output=True, cwd=Path(__file__).parent.parent)
    assert killed.returncode == 9, killed.stderr.decode()[-2000:]
    assert not db.exists() and list(tmp_path.glob(".mlflow.db.creating-*"))  # only the killed process's copy
    client = new_client(uri)
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "loss", 1.0)
    assert client.get_run(run.info.run_id).data.metrics["loss"] == 1.0
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))  # the dead copy is cleared


def test_a_store_whose_set_up_was_killed_gets_a_fix_not_a_retry(capsys, podrun_home, tmp_path):
    """A sender killed while MLflow created a fresh sqlite store leaves _alembic_tmp_*: sync says how to repair it."""
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_MIGRATION, uri], capture_output=True)
    assert killed.returncode == 9, killed.stderr.decode()[-2000:]
    with sqlite3.connect(db) as con:
        leftover = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp_%'")]
    assert leftover, "the injected kill left no half-done migration"
    job_dir = make_record(podrun_home, "job-m")
    spool = job_dir / "mlflow-spool"
    spool.mkdir()
    (spool / "meta.json").write_text(json.dumps({"tracking_uri": uri, "experiment": "m", "done": False}))
    (spool / "records.jsonl").write_text(json.dumps({"seq": 1, "kind": "end", "status": "FINISHED"}) + "\n")
    assert main(["sync", "job-m"]) != 0
    err = capsys.readouterr().err
    assert "retrying will not help" in err and "delete it" in err and "when it is reachable" not in err, err
    db.unlink()  # what the line says for a store that holds no runs yet; then sync again, as a user would
    again = subprocess.run([sys.executable, "-m", "orchestrator", "sync", "job-m"], capture_output=True, text=True)
    assert again.returncode == 0 and "sent 1 kept record(s)" in again.stdout, again.stderr[-2000:]


@pytest.mark.parametrize("garbage", [b"\x00\x01binary", b"{\"job_id\": 3}", b"[]", "{caf\xe9}".encode("latin-1")])
def test_damaged_job_record(capsys, podrun_home, garbage):
    make_record(podrun_home, "job-good")
    broken = podrun_home / "jobs" / "job-broken"
    broken.mkdir(parents=True)
    (broken / "job.json").write_bytes(garbage)
    err = one_line_error(capsys, ["status", "job-broken"])
    assert "job-broken/job.json: not a readable job record" in err
    assert main(["runs"]) == 0
    assert "job-good" in capsys.readouterr().out


def test_damaged_run_info_and_outcome_read_as_missing(tmp_path):
    from jobs.contract.checkpoint_index import read_run_info

    for garbage in (b"\x00\xff", b"[1]", b'{"attempts": 5, "mlflow_run_id": 7, "tracking_uri": "x"}'):
        (tmp_path / "run.json").write_bytes(garbage)
        (tmp_path / "outcome.json").write_bytes(garbage)
        info = read_run_info(tmp_path)
        assert "attempts" not in info and "mlflow_run_id" not in info
        assert exit_codes.read_outcome(tmp_path) is None
