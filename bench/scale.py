"""How podrun's costs grow with nodes: the tiny job through Slurm and Ray on 1 to 16 hosts of this machine.

    python bench/scale.py                                        # Slurm and Ray, 1, 2, 4, 8 hosts x 1 rank, 2 and 4 x 2
    python bench/scale.py --backends slurm --hosts 1,2 --extra ""  # a quick look

Every host is a network namespace with its own address and hostname (tests/fixtures/hosts.py),
one Slurm node or Ray node each; one CPU rank per host (``--extra`` adds ranks-per-host rows, so
that per-node and per-rank terms come apart). The job: ResNet-50 ``tiny`` on synthetic data, 8
optimizer steps per epoch on every rank whatever the world size, 2 epochs, a checkpoint per
epoch, preflight on (software, storage and the all-reduce test). For each run it prints one
row: submission to every rank started, startup to ``run_start`` (rank 0), preflight, one
step, a checkpoint, shutdown, and the wall time of ``podrun status`` and ``podrun logs``,
plus each host's CPU time (cgroup cpuacct) beside the wall time. Then it fits each cost to
``a + b*N`` (N: ranks), says what the fit predicts at 96 nodes x 16 ranks, and flags a cost
whose quadratic fit is much better than the linear one.

This machine has 2 cores: CPU contention grows with N here and would not on real nodes,
which is why the per-host CPU seconds are printed beside the wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pythonpath import with_repo  # bench/pythonpath.py, beside this script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BATCH, STEPS, EPOCHS = 32, 8, 2
COSTS = ("ranks_started_s", "startup_s", "preflight_s", "step_s", "checkpoint_s", "shutdown_s", "status_s", "logs_s")


def podrun(*argv: str, env: dict[str, str], timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    return time.monotonic() - started, proc


def profile(backend: str, folder: Path, nodes: int, cluster) -> dict:
    common = {"nodes": nodes, "gpus_per_node": 0, "cpus_per_node": 2, "data_root": str(folder / "data"),
              "checkpoint_root": str(folder / "ckpt"), "state_dir": str(folder / "state"),
              "preflight": {"enabled": True, "checks": ["software", "storage", "collectives"], "allreduce_mb": 1,
                            "min_busbw_gbps": 0.0001, "min_free_gb": 0.01}}
    if backend == "slurm":
        return common | {"scheduler": "slurm", "slurm": {"partition": "debug", "time": "01:00:00", "exclusive": False,
                                                        "mem_zero": False, "cpu_bind": None, "python": sys.executable,
                                                        "workdir": str(REPO), "max_failures": 0}}
    ray = {"address": cluster.dashboard_url, "token_file": str(cluster.token_path), "python": sys.executable,
           "max_failures": 0}
    return common | {"scheduler": "ray", "ray": ray}


def start_cluster(backend: str, hosts: int):
    from tests.fixtures.ray_cluster import RayCluster
    from tests.fixtures.slurm import SlurmCluster

    cluster = SlurmCluster("b", hosts) if backend == "slurm" else RayCluster("b", hosts)
    cluster.start()
    for name in cluster.hosts.nodes:
        cluster.hosts.track_cpu(name)
    return cluster


def rank_start_times(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"\] pid \d+ on \S+ \(process started ([0-9.]+)\)", text)]


def measure(backend: str, hosts: int, per_host: int, folder: Path) -> dict:
    """One run of the job on ``hosts`` hosts x ``per_host`` ranks; its costs and the hosts' CPU seconds."""
    from mlflow import MlflowClient

    from jobs.contract.checkpoint_index import read_run_info
    from orchestrator.backends import get_backend
    from orchestrator.spec.jobstore import list_records

    cluster = start_cluster(backend, hosts)
    try:
        world = hosts * per_host
        cluster_file = folder / "cluster.yaml"
        import yaml

        cluster_file.write_text(yaml.safe_dump({"profiles": {"bench": profile(backend, folder, hosts, cluster)}}))
        env = os.environ | {"PODRUN_HOME": str(folder / "home"), "PYTHONPATH": with_repo(REPO)}
        if backend == "slurm":
            env["SLURM_CONF"] = str(cluster.conf_path)
        env.pop("MLFLOW_TRACKING_URI", None)
        sets = {"cluster": "bench", "nodes": hosts, "tasks_per_node": per_host, "data.backend": "synthetic",
                "data.synthetic_samples": BATCH * STEPS * world, "train.epochs": EPOCHS, "eval.target": 1.0,
                "registry": "false"}
        wall, proc = podrun("launch", "resnet50:tiny", "--cluster-file", str(cluster_file), "--backend", backend,
                            *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")], env=env)
        os.environ["PODRUN_HOME"] = env["PODRUN_HOME"]
        record = list_records(Path(env["PODRUN_HOME"]))[0]
        status_s, _ = podrun("status", record.job_id, env=env)
        logs_s, logs = podrun("logs", record.job_id, env=env)
        log_text = logs.stdout if backend == "ray" else "\n".join(get_backend(backend).logs(record))
        starts = rank_start_times(log_text)
        run_id = read_run_info(Path(record.checkpoint_dir)).get("mlflow_run_id")
        metrics = MlflowClient(record.tracking_uri).get_run(run_id).data.metrics if run_id else {}
        row = {"backend": backend, "hosts": hosts, "ranks_per_host": per_host, "ranks": world,
               "exit": proc.returncode, "wall_s": round(wall, 2),
               "ranks_started_s": round(max(starts) - record.submitted_at, 2) if len(starts) == world else None,
               "startup_s": metrics.get("phase_startup_s"), "preflight_s": metrics.get("phase_preflight_s"),
               "step_s": round(metrics["phase_compute_s"] / (STEPS * EPOCHS), 4) if "phase_compute_s" in metrics
               else None,
               "checkpoint_s": round(metrics["phase_checkpoint_s"] / EPOCHS, 3) if "phase_checkpoint_s" in metrics
               else None,
               "shutdown_s": metrics.get("phase_shutdown_s"), "status_s": round(status_s, 2),
               "logs_s": round(logs_s, 2),
               "cpu_s_per_host": [round(cluster.hosts.cpu_seconds(name), 1) for name in cluster.hosts.nodes]}
        if proc.returncode not in (0, 2):
            row["error"] = (proc.stdout + proc.stderr)[-1500:]
        return row
    finally:
        cluster.stop()


def fit(rows: list[dict], cost: str) -> dict | None:
    """``a + b*N`` over the rows with that cost (N: ranks), its prediction at 1,536 ranks, and a quadratic check."""
    import numpy as np

    points = [(row["ranks"], row[cost]) for row in rows if row.get(cost) is not None]
    if len({n for n, _ in points}) < 3:
        return None
    n, y = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    b, a = np.polyfit(n, y, 1)
    linear = float(np.sum((np.polyval([b, a], n) - y) ** 2))
    quad = np.polyfit(n, y, 2)
    quadratic = float(np.sum((np.polyval(quad, n) - y) ** 2))
    return {"cost": cost, "a": round(float(a), 4), "b": round(float(b), 5),
            "at_1536_ranks": round(float(a + b * 1536), 2),
            "faster_than_linear": bool(quad[0] > 0 and quadratic < 0.25 * linear and linear > 1e-6)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="slurm,ray")
    parser.add_argument("--hosts", default="1,2,4,8", help="host counts, one rank per host")
    parser.add_argument("--extra", default="2x2,4x2", help="HOSTSxRANKS rows with more ranks per host")
    parser.add_argument("--out", type=Path, help="also write the rows and fits as JSON here")
    args = parser.parse_args()
    grid = [(int(h), 1) for h in args.hosts.split(",") if h]
    grid += [tuple(map(int, item.split("x"))) for item in args.extra.split(",") if item]
    print(f"# {platform.node()}: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the start; "
          f"python {platform.python_version()}", flush=True)
    rows = []
    for backend in args.backends.split(","):
        for hosts, per_host in grid:
            with tempfile.TemporaryDirectory(prefix="podrun-scale-") as tmp:
                row = measure(backend, hosts, per_host, Path(tmp))
            row["load_1m"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    fits = {backend: [found for cost in COSTS if (found := fit([r for r in rows if r["backend"] == backend], cost))]
            for backend in args.backends.split(",")}
    for backend, found in fits.items():
        for item in found:
            print(json.dumps({"backend": backend, **item}), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "fits": fits}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
