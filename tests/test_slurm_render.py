"""Rendering the sbatch script: golden files for one DGX-2 and 96 SuperPOD nodes, quoting, parsing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs.contract.placement import expand_hostlist
from orchestrator.backends.slurm import (
    SLURM_STATES,
    SlurmBackend,
    parse_sbatch_id,
    parse_scontrol,
    render_sbatch,
    sbatch_value,
)
from orchestrator.errors import ConfigError
from orchestrator.spec import resolve
from orchestrator.spec.jobstore import FAILED, PENDING, RUNNING, SUCCEEDED

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"


@pytest.fixture
def fixed(monkeypatch):
    monkeypatch.setattr(resolve, "git_sha", lambda: "0123456789ab")
    for name in ("MLFLOW_TRACKING_URI", "SLURM_ACCOUNT", "PODRUN_CLUSTER_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("spec,golden,nodes,backend,sets", [
    ("recipes/jobs/resnet50-dgx2.yaml", "dgx2.sbatch", 1, None, []),
    ("recipes/jobs/resnet50-superpod.yaml", "superpod.sbatch", 96, None, []),
    ("recipes/jobs/resnet50-superpod.yaml", "ray-on-slurm-superpod.sbatch", 96, "ray", []),
    ("recipes/jobs/resnet50-dgx2.yaml", "dgx2-horovod-gloo.sbatch", 1, None, ["comm=horovod"]),
    ("recipes/jobs/resnet50-superpod.yaml", "superpod-horovod-pmix.sbatch", 96, None,
     ["comm=horovod", "profile.slurm.mpi=pmix"]),
])
def test_golden_scripts(fixed, spec, golden, nodes, backend, sets, tmp_path):
    job = resolve.load_job(spec, sets, job_id=f"golden-{nodes}", backend=backend)
    script = SlurmBackend().render(job)
    if os.environ.get("PODRUN_UPDATE_GOLDEN"):
        (GOLDEN / golden).write_text(script)
    assert script == (GOLDEN / golden).read_text(), "re-run with PODRUN_UPDATE_GOLDEN=1 if the change is intended"
    assert f"#SBATCH --nodes={nodes}\n" in script
    path = tmp_path / golden
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_superpod_scale_derivation_is_in_the_script(fixed):
    job = resolve.load_job("recipes/jobs/resnet50-superpod.yaml", job_id="x")
    assert job.world_size == 768 and job.derived.optimizer == "lars"
    script = render_sbatch(job)
    assert "--gpus-per-node=8" in script and "--container-image='nvcr.io#nvidia/pytorch:25.01-py3'" in script
    assert "export NCCL_COLLNET_ENABLE=1" in script and "export NCCL_IB_HCA=mlx5_0," in script


def test_injection_attempts_are_quoted(fixed, tmp_path, monkeypatch):
    canary = tmp_path / "pwned"
    evil = f"$(touch {canary})`touch {canary}`'\"; touch {canary}"
    cluster = tmp_path / "cluster.yaml"
    env = {"EVIL": evil, "ODD_DEFAULT": "${PODRUN_UNSET_VAR:-a b*;&|<>()#~}"}  # a reference's default is data too
    profile = {"scheduler": "slurm", "gpus_per_node": 0, "state_dir": f"{tmp_path}/state", "env": env,
               "slurm": {"partition": evil, "python": evil, "extra_flags": [f"--comment={evil}"]}}
    cluster.write_text(yaml.safe_dump({"profiles": {"c": profile}}))
    job = resolve.load_job("resnet50:tiny", [f"data.dataset={evil}", "cluster=c"], cluster_file=str(cluster))
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(job))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Run it with no Slurm on PATH: srun is missing, so only the script's own lines run.
    proc = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert not canary.exists(), proc.stdout + proc.stderr
    written = (Path(job.job_dir) / "config.resolved.yaml").read_text()
    assert f"touch {canary}" in written  # the value arrived as data, intact
    exported = subprocess.run(["bash", "-c", f"sed -n '/^export ODD_DEFAULT=/p' {script} > {tmp_path}/odd.sh; "
                               f". {tmp_path}/odd.sh; printf %s \"$ODD_DEFAULT\""], capture_output=True, text=True)
    assert exported.stdout == "a b*;&|<>()#~", exported
    cluster.write_text(yaml.safe_dump({"profiles": {"c": profile | {"env": {"EVIL": f"${{X:-{evil}}}"}}}}))
    with pytest.raises(ConfigError, match="set X in the environment instead"):
        render_sbatch(resolve.load_job("resnet50:tiny", ["cluster=c"], cluster_file=str(cluster)))


def test_values_spanning_lines_are_refused(fixed):
    with pytest.raises(ConfigError):
        sbatch_value("gpu\n#SBATCH --wrap=evil")
    with pytest.raises(ConfigError, match="slurm.partition"):
        resolve.load_job("resnet50:tiny", ['profile.slurm.partition="gpu\\n#SBATCH --wrap=evil"'])
    with pytest.raises(ConfigError, match="one line"):
        resolve.load_job("resnet50:tiny", ['profile.slurm.extra_flags=["--x\\nrm -rf /"]'])


def test_sbatch_value_quoting():
    assert sbatch_value("gpu") == "gpu"
    assert sbatch_value("a b") == '"a b"'
    assert sbatch_value('x"$y') == '"x\\"\\$y"'


@pytest.mark.parametrize("text,hosts", [
    ("dgx[001-004,010]", ["dgx001", "dgx002", "dgx003", "dgx004", "dgx010"]),
    ("node1", ["node1"]),
    ("a[1-2],b,c[09-11]", ["a1", "a2", "b", "c09", "c10", "c11"]),
    ("n[1-2]-ib[0-1]", ["n1-ib0", "n1-ib1", "n2-ib0", "n2-ib1"]),
])
def test_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


def test_hostlist_malformed():
    with pytest.raises(ValueError):
        expand_hostlist("dgx[001-")


def test_parsers_and_state_table():
    assert parse_sbatch_id("4242\n") == "4242" and parse_sbatch_id("17;cluster\n") == "17"
    fields = parse_scontrol("JobId=7 JobName=x JobState=COMPLETED Reason=None ExitCode=2:0 Restarts=1 "
                            "NodeList=node[1-2]")
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "2:0" and fields["NodeList"] == "node[1-2]"
    assert SLURM_STATES["REQUEUED"] == PENDING and SLURM_STATES["COMPLETING"] == RUNNING
    assert SLURM_STATES["COMPLETED"] == SUCCEEDED and SLURM_STATES["TIMEOUT"] == FAILED
