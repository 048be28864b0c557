"""Secrets stay secret: planted in every place a user can put one, then looked for everywhere.

A secret goes into a cluster profile's env (a literal, and a ``${VAR}`` reference to an
environment variable), into ``--set profile.env.X=...`` (typed on the command line), and
into the MLflow URI (``http://user:PASSWORD@...``). The ranks must receive every value, and
none may show in MLflow (params, tags, metric names, artifacts), the spool, a log, a command
line, or any file podrun wrote.
"""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest
import yaml

from jobs.contract import exit_codes
from jobs.contract.config_io import read_yaml
from jobs.contract.secret_filter import MASK, mask_text, mask_uri, split_credentials
from orchestrator.cli import main
from orchestrator.spec.jobstore import list_records
from tests.waiting import wait_state, wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Five secrets, one per place a user can put one; the environment holds the referenced one."""
    found = {name: f"{name.lower()}-{secrets.token_hex(10)}" for name in
             ("profile_literal", "set_literal", "env_var", "set_env_var", "mlflow_password")}
    monkeypatch.setenv("MY_SECRET_TOKEN", found["env_var"])
    monkeypatch.setenv("SECOND_SOURCE", found["set_env_var"])
    return found


def secret_cluster_file(tmp_path: Path, planted: dict[str, str], **profile: object) -> Path:
    """A cluster file whose ``local`` profile holds a literal secret and a reference to one."""
    base = {"scheduler": "local", "nodes": 1, "gpus_per_node": 0, "data_root": str(tmp_path / "data"),
            "checkpoint_root": "${PODRUN_HOME}/checkpoints",
            "env": {"DB_PASSWORD": planted["profile_literal"], "WANDB_API_KEY": "${MY_SECRET_TOKEN}",
                    "NCCL_DEBUG": "INFO"}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"local": base | profile}}))
    return path


def secret_sets(planted: dict[str, str]) -> list[str]:
    return ["--set", f"profile.env.HF_TOKEN={planted['set_literal']}",
            "--set", "profile.env.RUN_LABEL=${SECOND_SOURCE}"]


def assert_clean(text: str, planted: dict[str, str], where: str) -> None:
    for name, value in planted.items():
        assert value not in text, f"{name} secret found in {where}"


# --------------------------------------------------------------------------- the rule, unit by unit


@pytest.mark.fast
def test_env_mappings_keep_references_and_other_strings_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_ROOT", "/data")
    path = tmp_path / "c.yaml"
    path.write_text("a: ${SOME_ROOT}/x\nenv: {K: '${SOME_ROOT}'}\ninterconnect: {env: {K: 'a${SOME_ROOT:-b}'}}\n")
    assert read_yaml(path) == {"a": "/data/x", "env": {"K": "${SOME_ROOT}"},
                               "interconnect": {"env": {"K": "a${SOME_ROOT:-b}"}}}


@pytest.mark.fast
def test_mask_text_keeps_keys_and_references():
    text = ("export DB_PASSWORD='hunter2hunter2'\nexport WANDB_API_KEY=\"${MY_SECRET_TOKEN}\"\n"
            "tracking_uri: http://bob:pa55word@host:5000\nmax_tokens: 4096\n\"api_key\": \"abc\", \"lr\": 0.1\n"
            "hf=hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\nknown: value-of-a-known-secret")
    assert mask_text(text, frozenset({"value-of-a-known-secret"})) == (
        f"export DB_PASSWORD='{MASK}'\nexport WANDB_API_KEY=\"${{MY_SECRET_TOKEN}}\"\n"
        f"tracking_uri: http://bob:{MASK}@host:5000\nmax_tokens: 4096\n\"api_key\": \"{MASK}\", \"lr\": 0.1\n"
        f"hf={MASK}\nknown: {MASK}")
    ordinary = ("export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/job/ray_auth_token\n    token_file: null\n"
                "# Ray's CLI (token auth: see above)\ngit_sha: 3f9a1c2d4e5b\nmax_tokens: 4096\n")
    assert mask_text(ordinary) == ordinary
    assert mask_uri("https://u:p%40ss@h/x") == f"https://u:{MASK}@h/x"
    assert split_credentials("http://u:p%40ss@h:1/x") == (
        "http://h:1/x", {"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p@ss"})
    assert split_credentials("sqlite:///a.db") == ("sqlite:///a.db", {})


@pytest.mark.fast
@pytest.mark.parametrize("backend", ["local", "slurm", "ray", "ray-on-slurm"])
def test_rendered_scripts_and_plans_hold_references_not_secrets(backend, tmp_path, planted, podrun_home,
                                                               monkeypatch, capsys):
    from orchestrator.backends import get_backend
    from orchestrator.spec.job_env import submission_environment
    from orchestrator.spec.jobspec import dump_plan
    from orchestrator.spec.resolve import load_job

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://podrun:{planted['mlflow_password']}@127.0.0.1:5000")
    scheduler = {"local": "local", "ray": "ray"}.get(backend, "slurm")
    cluster = secret_cluster_file(tmp_path, planted, scheduler=scheduler,
                                  interconnect={"env": {"NCCL_IB_HCA": "mlx5_0"}})
    sets = [s for s in secret_sets(planted) if s != "--set"]
    plan = load_job("resnet50:tiny", sets, cluster_file=str(cluster), backend="ray" if "ray" in backend else None)
    script = get_backend(scheduler if backend != "ray-on-slurm" else "slurm").render(plan)
    for text, where in ((script, "the script"), (dump_plan(plan), "launch.yaml"),
                        (plan.job.model_dump_json(), "config.resolved.yaml")):
        assert_clean(text, planted, where)
    assert "${MY_SECRET_TOKEN}" in script and "${SECOND_SOURCE}" in script and "${HF_TOKEN}" in script
    assert plan.job.tracking_uri == "http://127.0.0.1:5000"
    if scheduler == "slurm":
        assert 'export WANDB_API_KEY="${MY_SECRET_TOKEN}"' in script and 'export DB_PASSWORD="${DB_PASSWORD}"' in script
        assert "export MLFLOW_TRACKING_USERNAME=podrun" in script
        assert 'export MLFLOW_TRACKING_PASSWORD="${MLFLOW_TRACKING_PASSWORD}"' in script
        assert "export NCCL_IB_HCA=mlx5_0" in script and "umask 077" in script
    assert "# It reads DB_PASSWORD, MY_SECRET_TOKEN, HF_TOKEN, SECOND_SOURCE, MLFLOW_TRACKING_PASSWORD " in script
    # what podrun hands to the submitting process (sbatch, the supervisor): every value
    handed = submission_environment(plan)
    assert handed["DB_PASSWORD"] == planted["profile_literal"] and handed["HF_TOKEN"] == planted["set_literal"]
    assert handed["MY_SECRET_TOKEN"] == planted["env_var"] and handed["SECOND_SOURCE"] == planted["set_env_var"]
    assert handed["MLFLOW_TRACKING_PASSWORD"] == planted["mlflow_password"]


def test_render_names_the_variables_and_launch_refuses_an_unset_one(tmp_path, planted, podrun_home, capsys):
    cluster = secret_cluster_file(tmp_path, planted)
    assert main(["render", "resnet50:tiny", "--cluster-file", str(cluster), *secret_sets(planted)]) == 0
    out, err = capsys.readouterr()
    assert_clean(out + err, planted, "podrun render's output")
    assert "podrun: the script reads DB_PASSWORD, MY_SECRET_TOKEN, HF_TOKEN, SECOND_SOURCE from the environment" in err
    assert main(["launch", "resnet50:tiny", "--cluster-file", str(cluster), "--set", "data.backend=synthetic",
                 "--set", "profile.env.API_TOKEN=${PODRUN_SURELY_UNSET_VAR}"]) == exit_codes.CONFIG_ERROR
    err = capsys.readouterr().err
    assert "profile env API_TOKEN reads ${PODRUN_SURELY_UNSET_VAR}, which is not set here" in err
    assert not list_records(podrun_home)


def test_ssh_passes_variables_in_the_channel_not_the_command_line(ssh_server, planted, monkeypatch):
    """What sbatch and login.env need reaches the remote command; the login node's ps never shows it."""
    from orchestrator.backends.tunnel import SSHTunnel
    from orchestrator.spec.profiles import LoginConfig

    login = LoginConfig(host=ssh_server.host, port=ssh_server.port, user="root",
                        key_file=str(ssh_server.client_key_path),
                        known_hosts=str(ssh_server.known_hosts_path), env={"FROM_LOGIN": "${MY_SECRET_TOKEN}"})
    tunnel = SSHTunnel(login)
    try:
        result = tunnel.run(["sh", "-c", 'printf "%s %s\\n" "$FROM_LOGIN" "$DB_PASSWORD"; '
                                         "tr '\\0' ' ' < /proc/$$/cmdline; tr '\\0' ' ' < /proc/$PPID/cmdline"],
                            env={"DB_PASSWORD": planted["profile_literal"]})
    finally:
        tunnel.close()
    values, command_lines = result.stdout.split("\n", 1)
    assert values == f"{planted['env_var']} {planted['profile_literal']}", result
    assert "printf" in command_lines
    assert_clean(command_lines, planted, "the remote command lines")


# --------------------------------------------------------------------------- one real job, searched everywhere


def rank_processes(supervisor: int) -> list[int]:
    from orchestrator.backends.local_supervisor import rank_descendants

    return rank_descendants(supervisor)


def proc_text(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b"\n").decode(errors="replace")


def every_file(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def assert_owner_only(path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others ({oct(path.stat().st_mode)})"


@pytest.mark.slow
def test_a_job_with_secrets_everywhere_leaks_none(tmp_path, planted, podrun_home, monkeypatch, capsys):
    from mlflow import MlflowClient

    from jobs.contract.placement import free_port
    from jobs.tracking.tracker import replay_spool

    # The MLflow server is down: everything the job records waits in the spool, sent below.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://podrun:{planted['mlflow_password']}@127.0.0.1:{free_port()}")
    cluster = secret_cluster_file(tmp_path, planted)
    tiny = ["--set", "train.epochs=1", "--set", "data.backend=synthetic", "--set", "data.synthetic_samples=64",
            "--set", "tasks_per_node=1"]
    assert main(["launch", "resnet50:tiny", "--cluster-file", str(cluster), *tiny, *secret_sets(planted),
                 "--detach"]) == 0
    (record,) = list_records(podrun_home)
    supervisor = int(record.native_id)
    rank = wait_until(lambda: rank_processes(supervisor), "the rank process", timeout=120, every=0.05)[0]
    environ = proc_text(rank, "environ").splitlines()
    command_lines = proc_text(rank, "cmdline") + proc_text(supervisor, "cmdline")
    # every value reached the rank, through its environment
    for line in (f"DB_PASSWORD={planted['profile_literal']}", f"HF_TOKEN={planted['set_literal']}",
                 f"WANDB_API_KEY={planted['env_var']}", f"RUN_LABEL={planted['set_env_var']}",
                 f"MLFLOW_TRACKING_PASSWORD={planted['mlflow_password']}", "MLFLOW_TRACKING_USERNAME=podrun"):
        assert line in environ, line
    assert_clean(command_lines, planted, "the command lines ps shows")
    assert wait_state(record.job_id, capsys, timeout=300).split()[1] in ("SUCCEEDED", "FAILED")
    out, err = capsys.readouterr()

    # the job's folders are its owner's only
    job_dir, checkpoint_dir = Path(record.job_dir), Path(record.checkpoint_dir)
    for path in (job_dir, checkpoint_dir, job_dir / "config.resolved.yaml", job_dir / "launch.yaml",
                 job_dir / "render.txt", job_dir / "job.json", job_dir / "logs"):
        assert_owner_only(path)
    assert "${MY_SECRET_TOKEN}" in (job_dir / "render.txt").read_text()

    # send what the spool kept to a store we can read back, then search every record
    spool = job_dir / "mlflow-spool"
    assert (spool / "records.jsonl").is_file()
    store = tmp_path / "store"
    sent = replay_spool(spool, f"sqlite:///{store / 'mlflow.db'}")
    assert sent > 0
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("resnet50").experiment_id])
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert {"config.resolved.yaml", "render.txt"} <= set(artifacts)
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "downloaded")))
    records = [str(run.data.params), str(run.data.tags), str(list(run.data.metrics))]
    assert run.data.params["world_size"] == "1" and "epochs_run" in run.data.metrics
    assert_clean("\n".join(records), planted, "MLflow params, tags and metric names")
    for path in every_file(podrun_home, store, downloaded):
        assert_clean(path.read_bytes().decode(errors="replace"), planted, str(path))
    assert_clean(out + err, planted, "podrun's output")
    assert (downloaded / "render.txt").read_text().count("${") >= 4  # references stay references

