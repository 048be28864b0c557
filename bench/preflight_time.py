"""How long preflight takes: ``podrun preflight`` on a Slurm profile, interleaved with the local backend.

    SLURM_CONF=/path/slurm.conf PODRUN_DATA=data python bench/preflight_time.py --cluster-file cluster.yaml \
        --set cluster=test --set nodes=2

Each round runs ``podrun preflight resnet50:tiny`` once on the given profile (``nodes`` x 1
task, the sbatch preflight step) and once on the local backend (this machine, 2 ranks),
alternating which goes first. Two figures per run: the phase the job records
(``phase_preflight_s``: from the script starting the step to rank 0's report, so srun's
start-up, imports and every check) and the whole command (submission, queueing, the
step, reading the report back). The 1-minute load average is printed with each run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pythonpath import with_repo  # bench/pythonpath.py, beside this script

REPO = Path(__file__).resolve().parent.parent
PHASE = re.compile(r"preflight (?:all nodes passed|\d+ of \d+ node\(s\) FAILED) in ([0-9.]+) s")


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(recorded phase seconds, whole command seconds) of one ``podrun preflight``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "preflight", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    found = PHASE.search(proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"podrun preflight {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return float(found.group(1)), wall


def summary(values: list[float]) -> str:
    return f"min {min(values):.1f}  median {statistics.median(values):.1f}  max {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster-file", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="e.g. cluster=test, nodes=2")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="podrun-bench-preflight-")
    env = {**os.environ, "PODRUN_HOME": home, "PYTHONPATH": with_repo(REPO)}
    slurm = ["resnet50:tiny", "--cluster-file", args.cluster_file, *sum((["--set", s] for s in args.sets), []),
             "--set", "tasks_per_node=1"]
    local = ["resnet50:tiny", "--backend", "local", "--set", "cluster=local", "--set", "tasks_per_node=2"]
    results: dict[str, list[tuple[float, float]]] = {"slurm": [], "local": []}
    for round_ in range(args.repeats):
        order = [("slurm", slurm), ("local", local)] if round_ % 2 == 0 else [("local", local), ("slurm", slurm)]
        for name, argv in order:
            phase, wall = run_once(argv, env)
            results[name].append((phase, wall))
            print(f"round {round_ + 1} {name:5}: phase {phase:5.1f} s, command {wall:5.1f} s, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    for name, runs in results.items():
        print(f"{name:5} phase_preflight_s: {summary([p for p, _ in runs])};  "
              f"whole command: {summary([w for _, w in runs])}")


if __name__ == "__main__":
    main()
