"""What a launch costs: the same N-step job through ``podrun launch`` and as bare PyTorch processes.

    python bench/launch_overhead.py --ranks 1,2 --repeats 5       # on a quiet machine (load < 0.3)
    python bench/launch_overhead.py --repo /path/to/other/podrun   # time another checkout's launcher

The job: the ResNet-50 ``tiny`` preset on synthetic data, ``--steps`` optimizer steps per
rank, one evaluation and one checkpoint. The bare script (:mod:`bench.bare_tiny`) does the
same work with the same model and no podrun code, with the torch threads podrun's job uses
(the preset's ``train.cpu_threads``, read from the warm-up job's resolved config, else the
cores over the ranks). Baselines, each timed as processes from the command to the last exit:

- ``direct``: the ranks started by this script as plain processes with ``RANK``,
  ``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT`` set (no launcher at all);
- ``torchrun`` (2 ranks and more): ``torchrun --standalone --nproc-per-node N``, whose own
  agent start-up is part of its time.

``podrun`` is ``podrun launch`` with everything it does by default (MLflow tracking into a
sqlite store, the run page, the phases, per-node system metrics), from the command to its
exit. Runs alternate; the 1-minute load average before each run is printed beside each row
(figures from a machine at a load above 0.3 say more about the machine than about podrun).
The MLflow store is created once before timing (a user's store already exists).

Then, from the medians, where podrun's extra time goes: the CLI (to the job's record), the
supervisor (to the rank process), rank imports, the rendezvous, the set-up and the work, the
sender's CPU, and, on a line of its own, what happens after ``run_stop`` (the ranks' exit,
the job's end as the launcher sees it, the run's last MLflow records, podrun's exit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pythonpath import with_repo  # bench/pythonpath.py, beside this script

REPO = Path(__file__).resolve().parent.parent
BATCH = 32  # the tiny preset's per-rank batch
BARE = REPO / "bench" / "bare_tiny.py"
RANK_LINE = re.compile(r"\[rank 0/\d+\] pid \d+ on \S+ \(process started [\d.]+, imports ([\d.]+) s\)")
GROUP_LINE = re.compile(r"\[rank 0/\d+\] process group up in ([\d.]+) s")


def podrun_command(ranks: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "launch", "resnet50:tiny", "--set", f"tasks_per_node={ranks}",
            "--set", "data.backend=synthetic", "--set", f"data.synthetic_samples={BATCH * steps * ranks}",
            "--set", "train.epochs=1", "--set", "eval.target=1.0"]


def preset_threads(home: Path) -> int | None:
    """``train.cpu_threads`` of the newest job's resolved config (the tiny preset pins it), or None."""
    job_dir = max((home / "jobs").iterdir(), key=lambda path: path.stat().st_mtime)
    config = yaml.safe_load((job_dir / "config.resolved.yaml").read_text())
    return config["recipe"]["train"].get("cpu_threads")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_direct(ranks: int, steps: int, out: Path, env: dict[str, str]) -> tuple[float, str]:
    """The bare ranks as plain processes; (seconds to the last exit, rank 0's output)."""
    port, script = str(free_port()), [sys.executable, str(BARE), "--steps", str(steps), "--out", str(out)]
    started = time.perf_counter()
    procs = [subprocess.Popen(script, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks),
                                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for rank in range(ranks)]
    outputs = [proc.communicate()[0] for proc in procs]
    elapsed = time.perf_counter() - started
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"bare ranks failed:\n{outputs[0][-3000:]}")
    return elapsed, outputs[0]


def run_command(argv: list[str], cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    elapsed, out, _ = run_counted(argv, cwd, env, ok)
    return elapsed, out


def run_counted(argv: list[str], cwd: Path, env: dict[str, str],
                ok: tuple[int, ...] = (0,)) -> tuple[float, str, float]:
    """Wall seconds, output, and the CPU seconds of the process and the children it waited for."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return elapsed, proc.stdout, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def bare_stages(output: str, began: float, elapsed: float) -> dict[str, float]:
    """The stages of a bare run from its ``bare timings`` line (seconds)."""
    line = next((line for line in output.splitlines() if line.startswith("bare timings ")), None)
    if line is None:
        return {}
    t = json.loads(line.removeprefix("bare timings "))
    return {"launcher": t["start"] - began, "rank imports": t["imports"] - t["start"],
            "rendezvous": t["rendezvous"] - t["imports"], "set-up and work": t["work"] - t["rendezvous"],
            "exit": began + elapsed - t["work"]}


def podrun_stages(home: Path, output: str, began: float, elapsed: float) -> dict[str, float]:
    """The stages of a podrun run, from its job's files and rank 0's log (seconds; missing ones left out)."""
    job_dir = max((home / "jobs").iterdir(), key=lambda path: path.stat().st_mtime)
    record = json.loads((job_dir / "job.json").read_text())
    info = next(iter(home.glob(f"checkpoints/*/{job_dir.name}/run.json")), None)
    info = json.loads(info.read_text()) if info else {}
    meta_path = job_dir / "mlflow-spool" / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    log = (job_dir / "logs" / "rank0.log").read_text()
    ended = began + elapsed
    found: dict[str, float] = {"cli": record["submitted_at"] - began}
    if "first_origin" not in info:
        return found
    found["supervisor"] = info["first_origin"] - record["submitted_at"]
    imports, group = RANK_LINE.search(log), GROUP_LINE.search(log)
    if imports and group:
        found["rank imports"] = float(imports.group(1))
        found["rendezvous"] = float(group.group(1))
        started = info["first_origin"] + found["rank imports"] + found["rendezvous"]
        found["set-up and work"] = info["phases_at"] - started
    else:
        found["rank start-up and work"] = info["phases_at"] - info["first_origin"]
    found["after run_stop"] = ended - info["phases_at"]
    if "device_release_s" in meta:
        found["  ranks exited"] = meta["device_release_s"]
    if record.get("finished_at"):
        found["  job end seen"] = record["finished_at"] - info["phases_at"]
    if meta.get("done_at"):
        found["  last MLflow records"] = meta["done_at"] - info["phases_at"]
    for when, seconds in (meta.get("sender_cpu_s") or {}).items():
        found[f"sender CPU ({when})"] = seconds
    return found


def timed(kind: str, ranks: int, args: argparse.Namespace, home: Path, env: dict[str, str],
          bare_env: dict[str, str]) -> tuple[float, dict[str, float]]:
    began = time.time()
    if kind == "direct":
        elapsed, out = run_direct(ranks, args.steps, home / "bare.pt", bare_env)
        return elapsed, bare_stages(out, began, elapsed)
    if kind == "torchrun":
        torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", str(ranks),
                    str(BARE), "--steps", str(args.steps), "--out", str(home / "bare.pt")]
        elapsed, out = run_command(torchrun, REPO, bare_env)
        return elapsed, bare_stages(out, began, elapsed)
    # podrun exits 2: the tiny job does not reach top-1 1.0 (so no model is registered; the run page is)
    # its CPU is the launch process's own (CLI and following the job): the supervisor and the ranks
    # run in a session of their own, and it does not wait for them
    elapsed, out, cpu = run_counted(podrun_command(ranks, args.steps), args.repo, env, ok=(0, 2))
    return elapsed, podrun_stages(home, out, began, elapsed) | {"launch process CPU": cpu}


def spread(values: list[float]) -> str:
    return f"{min(values):6.2f} {statistics.median(values):6.2f} {max(values):6.2f}"


def print_table(times: dict, loads: dict, ranks: list[int]) -> None:
    print(f"\n{'ranks':>5}  {'run':<9} {'seconds min / median / max':>27}  {'extra (median)':>14}  load at start")
    for count in ranks:
        base = statistics.median(times[("direct", count)])
        for kind in ("direct", "torchrun", "podrun"):
            if (kind, count) not in times:
                continue
            extra = statistics.median(times[(kind, count)]) - base
            shown = f"{extra:+14.2f}" if kind != "direct" else f"{'':>14}"
            load = " ".join(f"{value:.2f}" for value in loads[(kind, count)])
            print(f"{count:>5}  {kind:<9} {spread(times[(kind, count)]):>27}  {shown}  {load}")


def median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    names = [name for name in runs[0] if all(name in run for run in runs)] if runs else []
    return {name: statistics.median(run[name] for run in runs) for name in names}


def print_breakdown(stages: dict, ranks: int) -> None:
    """podrun's stages beside the direct baseline's, medians."""
    pod, bare = median_stages(stages[("podrun", ranks)]), median_stages(stages[("direct", ranks)])
    print(f"\nwhere podrun's time goes, {ranks} rank(s), medians in seconds (direct: the bare ranks started directly)")
    print(f"  {'stage':<24} {'podrun':>7} {'direct':>7} {'extra':>7}")
    rows = [("CLI", pod.get("cli"), None), ("supervisor", pod.get("supervisor"), None)]
    rows += [(name, pod.get(name), bare.get(name)) for name in ("rank imports", "rendezvous", "set-up and work")]
    if "rank start-up and work" in pod:
        rows.append(("rank start-up and work", pod["rank start-up and work"], None))
    for name, mine, theirs in rows:
        if mine is None:
            continue
        other = f"{theirs:7.2f}" if theirs is not None else f"{'-':>7}"
        print(f"  {name:<24} {mine:7.2f} {other} {mine - (theirs or 0.0):+7.2f}")
    cpu = [f"{pod[key]:.2f} s {key.split('(')[1][:-1]}" for key in pod if key.startswith("sender CPU")]
    if cpu:
        print(f"  {'sender':<24} CPU time: {', '.join(cpu)} (run: until it saw the run end; nice +10 from run_start)")
    if "launch process CPU" in pod:
        print(f"  {'podrun launch':<24} CPU time: {pod['launch process CPU']:.2f} s (CLI and following the job; "
              "the supervisor and the ranks not counted)")
    if "after run_stop" in pod:
        parts = [f"{name.strip()} {pod[name]:.2f}" for name in pod if name.startswith("  ")]
        print(f"  after run_stop: podrun exited {pod['after run_stop']:.2f} s after it ({', '.join(parts)}); "
              f"direct: {bare.get('exit', 0.0):.2f} s from the work's end to the exit")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO, help="the podrun checkout whose launcher is timed")
    args = parser.parse_args()
    args.repo = args.repo.resolve()
    home = Path(tempfile.mkdtemp(prefix="podrun-launch-bench-"))
    env = dict(os.environ, PODRUN_HOME=str(home), PYTHONPATH=with_repo(args.repo, REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; podrun at {args.repo}")
    print(f"# load average at the start: {os.getloadavg()[0]:.2f} (1 min)")
    print("# warming up: creating the MLflow store and the caches", flush=True)
    run_command(podrun_command(1, args.steps), args.repo, env, ok=(0, 2))
    pinned = preset_threads(home)
    print(f"# torch threads per rank, podrun's and the bare ranks': {pinned or 'the cores over the ranks'}", flush=True)
    ranks = [int(r) for r in args.ranks.split(",")]
    times: dict[tuple[str, int], list[float]] = {}
    loads: dict[tuple[str, int], list[float]] = {}
    stages: dict[tuple[str, int], list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        for count in ranks:
            threads = str(pinned or max(1, (os.cpu_count() or 1) // count))  # what podrun's ranks use
            bare_env = dict(os.environ, PYTHONPATH=with_repo(REPO), OMP_NUM_THREADS=threads)
            kinds = ["direct", "torchrun", "podrun"] if count > 1 else ["direct", "podrun"]
            for kind in kinds[repeat % len(kinds):] + kinds[: repeat % len(kinds)]:
                loads.setdefault((kind, count), []).append(os.getloadavg()[0])
                elapsed, found = timed(kind, count, args, home, env, bare_env)
                times.setdefault((kind, count), []).append(elapsed)
                stages.setdefault((kind, count), []).append(found)
        print(f"# repeat {repeat + 1}/{args.repeats} done", flush=True)
    print_table(times, loads, ranks)
    for count in ranks:
        print_breakdown(stages, count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
