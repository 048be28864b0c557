"""Every profile field that reaches a shell, given a value that would run a command: nothing runs.

The sbatch scripts (a training job with Horovod's rendezvous and preflight, and Ray inside an
allocation) are rendered from a cluster file whose every such field holds ``$(touch ...)``,
backquotes and ``;``, then run by bash with fake ``srun``/``sbatch``/``scontrol``/``ray``/
``python3`` first on the PATH. No marker file may appear. ``slurm.setup`` is shell by design
(lines the profile's author wants run before srun) and is left out. Names that cannot be
quoted (environment variable names, job names) are refused where they are read.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs.contract import exit_codes
from orchestrator.backends.slurm import SlurmBackend
from orchestrator.cli import main
from orchestrator.spec.resolve import load_job
from tests.test_config import render_error

pytestmark = pytest.mark.fast

FAKES = {
    "srun": "exit 0",
    "sbatch": "echo 1",
    "scontrol": 'if [ "$1 $2" = "show hostnames" ]; then echo node1; fi; exit 0',
    "sinfo": "exit 0",
    "squeue": "exit 0",
    "ray": "exit 0",
    "hostname": "echo 10.9.9.9",
    # the scripts' own Python calls: Ray's token and node count, Horovod's rendezvous port file
    "python3": 'case "$1" in -c) echo 00ff ;; -) cat >/dev/null; echo 1 ;; esac\n'
               'while [ $# -gt 0 ]; do [ "$1" = --port-file ] && echo 29500 > "$2"; shift; done; exit 0',
}


def hostile(marks: Path, n: int) -> str:
    """A value that would create ``marks/<n>-...`` if any shell evaluated it."""
    return f"x$(touch {marks}/{n}-dollar)`touch {marks}/{n}-tick`;touch {marks}/{n}-semi;"


def cluster_file(tmp_path: Path, marks: Path, comm: str) -> tuple[Path, str]:
    """A cluster file with one Slurm profile whose every shell-reaching field is hostile; returns it and its name."""
    h = iter(range(1000))
    root = tmp_path / f"root{hostile(marks, next(h))}"
    profile = {
        "scheduler": "slurm", "nodes": 1, "gpus_per_node": 0, "cpus_per_node": 2,
        "data_root": str(root / "data"), "checkpoint_root": str(root / "ckpt"), "state_dir": str(root / "state"),
        "env": {"SAFE_VALUE": hostile(marks, next(h))},
        "interconnect": {"env": {"NCCL_SOCKET_IFNAME": hostile(marks, next(h))}},
        "container": {"image": hostile(marks, next(h)), "mounts": [hostile(marks, next(h)), "/a:/b"],
                      "workdir": f"/w{hostile(marks, next(h))}\ntouch {marks}/newline-in-comment"},
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "experiment": hostile(marks, next(h))},
        "slurm": {
            "partition": hostile(marks, next(h)), "account": hostile(marks, next(h)), "qos": hostile(marks, next(h)),
            "time": hostile(marks, next(h)), "dependency": hostile(marks, next(h)),
            "cpu_bind": hostile(marks, next(h)), "extra_flags": [f"--comment={hostile(marks, next(h))}"],
            "workdir": str(tmp_path / f"src{hostile(marks, next(h))}"),
            "python": hostile(marks, next(h)) if comm == "ddp" else "python3",
            "signal_lead_s": 0,
        },
        "preflight": {"enabled": True},
    }
    name = f"p{hostile(marks, next(h))}\ntouch {marks}/profile-newline"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"profiles": {name: profile}}))
    return path, name


def run_script(script: str, tmp_path: Path, marks: Path) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    for name, body in FAKES.items():
        (fake / name).write_text(f"#!/bin/bash\n{body}\n")
        (fake / name).chmod(stat.S_IRWXU)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    env = os.environ | {"PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1",
                        "SLURM_JOB_NUM_NODES": "1"}
    return subprocess.run(["bash", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("comm, extra", [
    ("ddp", []),
    ("horovod", ["comm=horovod"]),
    ("ray", []),
])
def test_no_hostile_field_runs_a_command(tmp_path, monkeypatch, podrun_home, comm, extra):
    marks = tmp_path / "marks"
    marks.mkdir()
    path, name = cluster_file(tmp_path, marks, comm)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "hostile", "recipe": "resnet50", "preset": "tiny", "cluster": name}))
    plan = load_job(str(spec), ["data.backend=synthetic", *extra], cluster_file=str(path), job_id="hostile-1",
                    backend="ray" if comm == "ray" else None)
    script = SlurmBackend().render(plan)
    ran = run_script(script, tmp_path, marks)
    assert not list(marks.iterdir()), f"a hostile value ran: {sorted(p.name for p in marks.iterdir())}\n{ran.stderr}"
    # and the script did run to its end (the fakes answered), so every line was reached
    assert ("Ray job ended" if comm == "ray" else "[podrun] reached target") in ran.stdout, ran.stdout + ran.stderr


@pytest.mark.parametrize("sets, says", [
    (["name=a;touch x"], "name: String should match pattern"),
    (["profile.env.A;B=1"], "expected KEY=VALUE"),
    (["profile.env.9X=1"], "'9X' is not an environment variable name"),
])
def test_names_that_cannot_be_quoted_are_refused(capsys, podrun_home, sets, says):
    argv = ["resnet50:tiny", *[arg for item in sets for arg in ("--set", item)]]
    assert says in render_error(capsys, *argv)


def test_an_env_name_from_a_cluster_file_is_refused_in_one_line(tmp_path, capsys, podrun_home):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"local": {"scheduler": "local",
                                                           "env": {"A;touch /tmp/x;B": "1"}}}}))
    assert main(["render", "resnet50:tiny", "--cluster-file", str(path)]) == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert err == (f"podrun: error: {path}: profiles.local.env: 'A;touch /tmp/x;B' is not an environment variable "
                   "name: use letters, digits and _, not starting with a digit")
