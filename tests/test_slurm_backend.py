"""The Slurm backend against a real two-node Slurm cluster (and a real sshd for remote submission)."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from jobs.contract import exit_codes
from jobs.rank.checkpoint import latest_checkpoint, load_checkpoint, read_run_info
from orchestrator.cli import main
from orchestrator.spec.jobstore import JobRecord, list_records
from orchestrator.studies.run_phases import record_phases
from tests.waiting import status_logs_then_cancel, wait_for_text, wait_state, wait_until

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def make_profile(tmp_path: Path, digits_root: Path, login: dict | None = None, preflight: dict | None = None,
                 **slurm) -> Path:
    """A cluster file whose ``test`` profile is the local two-node Slurm cluster (preflight off unless given)."""
    profile = {
        "scheduler": "slurm", "nodes": 2, "gpus_per_node": 0, "cpus_per_node": 2,
        "data_root": str(digits_root), "checkpoint_root": str(tmp_path / "checkpoints"),
        "state_dir": str(tmp_path / "state"),
        "env": {},  # the nodes are hosts of their own: no MASTER_ADDR, ranks find rank 0 by its name
        "preflight": preflight or {"enabled": False},  # only tests/test_preflight_slurm.py pays for it
        "slurm": {"partition": "debug", "time": "00:20:00", "exclusive": False, "mem_zero": False,
                  "cpu_bind": None, "python": sys.executable, "workdir": str(REPO), **slurm},
    }
    if login:
        profile["slurm"]["login"] = login
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"test": profile}}))
    return path


@pytest.fixture
def slurm_env(local_env, slurm_cluster, monkeypatch, tmp_path, digits_root):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf_path))
    return make_profile(tmp_path, digits_root)


def job_args(cluster_file: Path, *extra: str) -> list[str]:
    return ["resnet50:tiny", "--cluster-file", str(cluster_file), "--set", "cluster=test", "--set", "nodes=2",
            "--set", "tasks_per_node=1", "--backend", "slurm", *extra]


def newest_record(home: Path):
    return list_records(home)[0]


def slurm_log(record) -> Path:
    return Path(record.extra["cluster_job_dir"]) / "logs" / f"slurm-{record.native_id}.out"


@pytest.mark.registry
def test_two_node_job_reaches_target_and_preempted_job_resumes_to_the_same_result(slurm_env, local_env, capsys,
                                                                                   slurm_cluster):
    # Uninterrupted: `podrun launch --backend slurm` submits, follows and returns the job's exit code.
    assert main(["launch", *job_args(slurm_env, "--set", "system_metrics_interval_s=2")]) == exit_codes.SUCCESS
    out = capsys.readouterr().out
    assert "[done] reached target" in out
    plain = newest_record(local_env)
    assert plain.state == "SUCCEEDED" and plain.native_id.isdigit()
    log = slurm_log(plain).read_text()
    assert f"on {slurm_cluster.hosts.hostlist} " in log  # two hosts, each with its own address
    run_id = read_run_info(Path(plain.checkpoint_dir))["mlflow_run_id"]
    client = MlflowClient(plain.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.metrics["time_to_train_s"] > 0 and run.data.params["world_size"] == "2"
    assert run.data.params["backend"] == "slurm" and run.data.tags["slurm_job_id"] == plain.native_id
    assert "job.sbatch" in {a.path for a in client.list_artifacts(run_id)}
    # one system-metrics monitor per node: rank 0's sender (node_0) and node 2's local rank 0 (node_1)
    assert {f"system/node_{i}/cpu_utilization_percentage" for i in (0, 1)} <= set(run.data.metrics)
    version = client.get_model_version("resnet50", "1")  # the model, registered by the launcher after the job
    assert version.run_id == run_id and version.creation_timestamp / 1000 >= plain.finished_at
    assert 0 <= run.data.metrics["device_release_s"] < 60  # run_stop to the allocation's end: EndTime, in whole
    stamp = float((Path(plain.extra["cluster_job_dir"]) / "ranks-ended-at").read_text())  # seconds, refined by the
    assert plain.extra["ended_at"] in (stamp, math.floor(stamp) + 1)  # batch script's clock within its second
    assert run.data.metrics["device_release_s"] == pytest.approx(
        plain.extra["ended_at"] - read_run_info(Path(plain.checkpoint_dir))["phases_at"], abs=0.002)
    assert (Path(plain.extra["cluster_job_dir"]) / "job.sbatch").is_file()

    # Preempted mid-run with USR2 to the batch shell: requeued, resumed, same result.
    assert main(["launch", *job_args(slurm_env), "--detach"]) == 0
    capsys.readouterr()
    preempted = newest_record(local_env)
    wait_for_text(slurm_log(preempted), "[train] epoch 2/")
    slurm_cluster.run("scancel", "--signal=USR2", "--batch", preempted.native_id)
    # Slurm holds a requeued batch job for the credential lifetime (30 s on the test cluster) and
    # then starts it by itself; a start forced sooner is killed ("Job credential revoked").
    wait_until(lambda: "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", preempted.native_id).stdout,
               "the requeue", 120, every=1)
    line = wait_state(preempted.job_id, capsys, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=400)
    assert "SUCCEEDED" in line and "restarts 1" in line, line
    log = slurm_log(preempted).read_text()
    assert "preempted: requeueing" in log and "[resume] ckpt-" in log

    expected = load_checkpoint(latest_checkpoint(Path(plain.checkpoint_dir)))
    got = load_checkpoint(latest_checkpoint(Path(preempted.checkpoint_dir)))
    assert got["progress"]["evals"] == expected["progress"]["evals"]
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, got["model"][name]), name
    info = read_run_info(Path(preempted.checkpoint_dir))
    assert len(info["attempts"]) == 2  # both attempts logged to ...
    run = client.get_run(info["mlflow_run_id"])  # ... one MLflow run
    assert run.data.tags["slurm_restart_count"] == "1" and run.data.metrics["time_lost_s"] > 0
    assert run.data.metrics["reached_target"] == 1.0
    # Phases across the requeue: the gap between the attempts is lost, and all of it adds up.
    breakdown = record_phases(JobRecord.load(preempted.path))
    assert breakdown.phases["lost"] > 0 and abs(breakdown.total_s - breakdown.wall_s) <= 0.02 * breakdown.wall_s
    assert breakdown.phases["other"] < 0.10 * breakdown.wall_s, breakdown.phases  # measured, not left over


def test_status_logs_and_cancel_on_a_real_job(slurm_env, local_env, capsys):
    assert main(["launch", *job_args(slurm_env, "--set", "eval.target=1.0", "--set", "train.epochs=50"),
                 "--detach"]) == 0
    record = newest_record(local_env)
    capsys.readouterr()
    wait_for_text(slurm_log(record), "[train] epoch 1/")
    status_logs_then_cancel(record.job_id, capsys)
    wait_for_text(slurm_log(record), "[checkpoint]", timeout=60)  # the ranks saved their work on the way out
    assert latest_checkpoint(Path(record.checkpoint_dir)) is not None


def test_remote_submission_over_ssh(local_env, slurm_cluster, ssh_server, tmp_path, digits_root, capsys,
                                    monkeypatch):
    monkeypatch.delenv("SLURM_CONF", raising=False)  # only the remote side knows the cluster
    login = {"host": ssh_server.host, "port": ssh_server.port, "user": "root",
             "key_file": str(ssh_server.client_key_path), "known_hosts": str(ssh_server.known_hosts_path),
             "env": {"SLURM_CONF": str(slurm_cluster.conf_path)}}
    cluster = make_profile(tmp_path, digits_root, login=login)
    assert main(["launch", *job_args(cluster, "--set", "train.epochs=1", "--set", "eval.target=0.01"),
                 "--detach"]) == 0
    record = newest_record(local_env)
    assert record.extra["login"]["host"] == ssh_server.host  # the login host, another machine
    capsys.readouterr()
    assert "SUCCEEDED" in wait_state(record.job_id, capsys, {"SUCCEEDED", "FAILED", "CANCELLED"})
    assert main(["logs", record.job_id]) == 0  # fetched over SFTP
    assert "[done] reached target" in capsys.readouterr().out

    # A changed host key is refused with one clear line, and nothing is submitted.
    login["known_hosts"] = str(ssh_server.wrong_known_hosts())
    cluster = make_profile(tmp_path, digits_root, login=login)
    assert main(["launch", *job_args(cluster), "--detach"]) == exit_codes.BACKEND_ERROR
    err = capsys.readouterr().err
    assert f"host key of root@{ssh_server.host}" in err and "does not match" in err
    assert len(err.strip().splitlines()) == 1
    refused = newest_record(local_env)
    assert refused.state == "FAILED" and "submission failed" in refused.detail and not refused.native_id


def test_ray_inside_a_slurm_allocation(slurm_env, local_env, capsys, tmp_path, digits_root):
    cluster = make_profile(tmp_path, digits_root)
    profile = yaml.safe_load(cluster.read_text())
    profile["profiles"]["test"]["cpus_per_node"] = 1
    profile["profiles"]["test"]["ray"] = {  # every node is a host of its own: Ray's default ports on each
        "python": sys.executable, "object_store_bytes": 256 * 1024**2, "max_failures": 0}
    cluster.write_text(yaml.safe_dump(profile))
    args = job_args(cluster, "--set", "train.epochs=2", "--set", "eval.target=0.01")
    args[args.index("slurm")] = "ray"
    assert main(["launch", *args, "--on", "slurm"]) == exit_codes.SUCCESS
    record = newest_record(local_env)
    assert record.backend == "slurm" and record.state == "SUCCEEDED"
    log = slurm_log(record).read_text()
    assert "2 Ray nodes up" in log and "[ray] finished: reached target" in log and "stopping Ray" in log


@pytest.mark.parametrize("recipe,extra,unit", [
    ("transformer:tiny", [], "tok"),
    ("resnet50:tiny", ["--set", "comm=horovod"], "img"),  # srun-started ranks, gloo rendezvous from the script
])
def test_recipe_and_comm_variants_reach_their_target_on_slurm(slurm_env, local_env, capsys, recipe, extra, unit,
                                                              translation_root):
    if recipe.startswith("transformer"):
        extra = [*extra, "--set", f"profile.data_root={translation_root}"]
    args = job_args(slurm_env, *extra)
    args[0] = recipe
    assert main(["launch", *args]) == exit_codes.SUCCESS, capsys.readouterr().out[-3000:]
    record = newest_record(local_env)
    log = slurm_log(record).read_text()
    assert "[done] reached target" in log and "[rank 1/2]" in log
    run = MlflowClient(record.tracking_uri).get_run(read_run_info(Path(record.checkpoint_dir))["mlflow_run_id"])
    assert run.data.metrics["time_to_train_s"] > 0 and f"mean_throughput_{unit}_per_s" in run.data.metrics
    if "comm=horovod" in extra:
        assert "Horovod rendezvous for 2 ranks" in log and run.data.params["comm"] == "horovod"


def test_the_readme_s_render_then_sbatch_line_reaches_the_target(slurm_env, slurm_cluster, tmp_path):
    """``podrun render JOB > job.sbatch && sbatch job.sbatch``, as the README says: no podrun launch."""
    script = tmp_path / "job.sbatch"
    argv = " ".join(shlex.quote(arg) for arg in job_args(slurm_env, "--set", "train.epochs=2",
                                                              "--set", "eval.target=0.01"))
    command = f"{shlex.quote(sys.executable)} -m orchestrator render {argv} > {script} && sbatch --parsable {script}"
    submitted = subprocess.run(["bash", "-c", command], cwd=REPO, env=slurm_cluster.env, capture_output=True,
                               text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    native = submitted.stdout.strip().split(";")[0]
    output = re.search(r"^#SBATCH --output=(\S+)$", script.read_text(), re.M).group(1).replace("%j", native)
    assert slurm_cluster.wait_job(native, timeout=400) == "COMPLETED", Path(output).read_text()[-3000:]
    log = Path(output).read_text()
    assert "[done] reached target" in log and "[rank 1/2]" in log
