"""What the end of a run holds: ``device_release_s`` on the local, Slurm and Ray backends, model registered.

    python bench/device_release.py                          # local, then Slurm and Ray on 2 test hosts
    python bench/device_release.py --backends local --repeats 3

The MLflow store (sqlite) is created before each launch, as a user's already exists: the
rank never stops a sender that has not created the run yet (:mod:`jobs.tracking.tracker`),
so the first job on a fresh store pays for creating its tables.
The job: ResNet-50 ``tiny`` on synthetic data, 8 optimizer steps per epoch, a target it reaches at the first
evaluation (so that the model is registered), with
everything a launch does by default (MLflow into a sqlite store, the model exported and
registered, the run page). For each run it prints one row: ``device_release_s`` (``run_stop``
to the exit of the last rank process; on Slurm the allocation's end), ``phase_shutdown_s``
(the ranks' end to the launcher seeing the job end, which includes its polling), how long
after the job's end the model version was registered (it is sent from outside the
allocation: :mod:`jobs.tracking.sender`), the launch's wall time and the 1-minute load.
Slurm and Ray run on test hosts of this machine (network namespaces, tests/fixtures/hosts.py),
one rank on each of ``--hosts`` hosts; local runs one rank per ``--hosts``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

from pythonpath import with_repo
from scale import BATCH, EPOCHS, REPO, STEPS, podrun, profile, start_cluster  # bench/scale.py, beside this script

SENDER_WAIT = re.compile(r"\[mlflow\] (?:run recorded: the sender took|records kept for a finisher: the sender had not "
                         r"sent the run.s last records after) ([\d.]+) s")


def measure(backend: str, hosts: int, folder: Path, logs: Path | None = None) -> dict:
    """One run; its release time, shutdown phase and registration delay."""
    import yaml
    from mlflow import MlflowClient

    from jobs.contract.checkpoint_index import read_run_info
    from orchestrator.spec.jobstore import list_records

    cluster = None if backend == "local" else start_cluster(backend, hosts)
    try:
        env = os.environ | {"PODRUN_HOME": str(folder / "home"), "PYTHONPATH": with_repo(REPO)}
        for store in (folder / "home", folder / "state"):  # a user's store exists: its tables are not timed
            store.mkdir(parents=True, exist_ok=True)
            MlflowClient(f"sqlite:///{store / 'mlflow.db'}").search_experiments()
        env.pop("MLFLOW_TRACKING_URI", None)
        sets = {"tasks_per_node": 1 if cluster else hosts, "data.backend": "synthetic",
                "data.synthetic_samples": BATCH * STEPS * hosts, "train.epochs": EPOCHS, "eval.target": 0.01}
        extra: list[str] = []
        if cluster is not None:
            cluster_file = folder / "cluster.yaml"
            cluster_file.write_text(yaml.safe_dump({"profiles": {"bench": profile(backend, folder, hosts, cluster)}}))
            extra = ["--cluster-file", str(cluster_file), "--backend", backend]
            sets |= {"cluster": "bench", "nodes": hosts}
            if backend == "slurm":
                env["SLURM_CONF"] = str(cluster.conf_path)
        wall, proc = podrun("launch", "resnet50:tiny", *extra,
                            *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")], env=env)
        row: dict = {"backend": backend, "ranks": hosts, "exit": proc.returncode, "wall_s": round(wall, 2)}
        if logs is not None:  # the launch's own output, for where the time after run_stop went
            logs.mkdir(parents=True, exist_ok=True)
            (logs / f"{backend}-{len(list(logs.glob(backend + '-*')))}.log").write_text(proc.stdout + proc.stderr)
        waited = SENDER_WAIT.search(proc.stdout)
        if waited:  # rank 0 waited this long for its sender (records up to the end) before it exited
            row["rank0_waited_for_sender_s"] = float(waited.group(1))
        records = list_records(Path(env["PODRUN_HOME"]))
        if proc.returncode != 0 or not records:
            return row | {"error": (proc.stdout + proc.stderr)[-1500:]}
        record = records[0]
        run_id = read_run_info(Path(record.checkpoint_dir)).get("mlflow_run_id")
        client = MlflowClient(record.tracking_uri)
        metrics = client.get_run(run_id).data.metrics
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        ended = record.extra.get("ended_at") or record.finished_at
        return row | {"device_release_s": metrics.get("device_release_s"),
                      "phase_shutdown_s": metrics.get("phase_shutdown_s"),
                      "registered_after_end_s": round(versions[0].creation_timestamp / 1000 - ended, 2)
                      if versions and ended else None}
    finally:
        if cluster is not None:
            cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="local,slurm,ray")
    parser.add_argument("--hosts", type=int, default=2, help="Slurm/Ray: hosts, one rank each; local: ranks")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--logs", type=Path, help="keep each launch's output in this folder")
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the start; "
          f"python {platform.python_version()}", flush=True)
    for _ in range(args.repeats):
        for backend in args.backends.split(","):
            load = round(os.getloadavg()[0], 2)
            with tempfile.TemporaryDirectory(prefix="podrun-release-") as tmp:
                row = measure(backend, args.hosts, Path(tmp), args.logs)
            print(json.dumps(row | {"load_1m_before": load}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
