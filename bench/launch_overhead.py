"""What a launch costs: the same N-step job through ``podrun launch`` and as a bare PyTorch script.

    python bench/launch_overhead.py                     # 1 and 2 ranks, 5 interleaved repeats
    python bench/launch_overhead.py --repo /path/to/other/podrun   # time another checkout's launcher

The job: the ResNet-50 ``tiny`` preset on synthetic data, ``--steps`` optimizer steps per
rank, one evaluation and one checkpoint. The bare script (:mod:`bench.bare_tiny`) does the
same work with the same model and no podrun code; for 2 ranks it is started by
``torchrun --nproc-per-node 2``, as podrun's local backend starts its ranks. Both are timed
as whole processes, from the command to its exit, alternating which goes first. The MLflow
store is created once before timing (a user's store already exists).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pythonpath import with_repo  # bench/pythonpath.py, beside this script

REPO = Path(__file__).resolve().parent.parent
BATCH = 32  # the tiny preset's per-rank batch


def podrun_command(repo: Path, ranks: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "launch", "resnet50:tiny", "--set", f"tasks_per_node={ranks}",
            "--set", "data.backend=synthetic", "--set", f"data.synthetic_samples={BATCH * steps * ranks}",
            "--set", "train.epochs=1", "--set", "eval.target=1.0"]


def bare_command(ranks: int, steps: int, out: Path) -> list[str]:
    script = [str(REPO / "bench" / "bare_tiny.py"), "--steps", str(steps), "--out", str(out)]
    if ranks == 1:
        return [sys.executable, *script]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    return [torchrun, "--standalone", "--nproc-per-node", str(ranks), *script]


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 2):  # podrun exits 2: the tiny job does not reach top-1 1.0
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO, help="the podrun checkout whose launcher is timed")
    args = parser.parse_args()
    repo = args.repo.resolve()
    home = Path(tempfile.mkdtemp(prefix="podrun-launch-bench-"))
    env = dict(os.environ, PODRUN_HOME=str(home), PYTHONPATH=with_repo(repo, REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    bare_env = dict(os.environ, PYTHONPATH=with_repo(REPO), OMP_NUM_THREADS="1")
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; podrun at {repo}")
    print("# warming up: creating the MLflow store and the caches", flush=True)
    timed(podrun_command(repo, 1, args.steps), repo, env)
    ranks = [int(r) for r in args.ranks.split(",")]
    times: dict[tuple[str, int], list[float]] = {}
    for repeat in range(args.repeats):
        for count in ranks:
            runs = [("bare", bare_command(count, args.steps, home / "bare.pt"), REPO, bare_env),
                    ("podrun", podrun_command(repo, count, args.steps), repo, env)]
            for name, argv, cwd, run_env in runs if repeat % 2 == 0 else runs[::-1]:
                times.setdefault((name, count), []).append(timed(argv, cwd, run_env))
        print(f"# repeat {repeat + 1}/{args.repeats} done", flush=True)
    print(f"\n{'ranks':>5} | {'bare s (min/med/max)':>22} | {'podrun s (min/med/max)':>24} | {'extra s (median)':>16}")
    for count in ranks:
        bare, pod = times[("bare", count)], times[("podrun", count)]
        extra = statistics.median(pod) - statistics.median(bare)
        print(f"{count:>5} | {min(bare):6.2f} {statistics.median(bare):6.2f} {max(bare):6.2f}   | "
              f"{min(pod):6.2f} {statistics.median(pod):6.2f} {max(pod):6.2f}     | {extra:+16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
