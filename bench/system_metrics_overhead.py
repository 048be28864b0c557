"""What per-node system metrics cost a training step: MLflow's monitor, as podrun runs it.

    python bench/system_metrics_overhead.py                # 1 s and 10 s intervals, 5 interleaved repeats

A. CPU per sample: a process starts ``SystemMetricsMonitor`` (through
   :func:`jobs.tracking.system_metrics.start_monitor`) on a run in a fresh sqlite store and sleeps;
   its CPU time (all threads, ``getrusage``) over the window, divided by the samples taken,
   is what one sample (psutil reads + one ``log_batch``) costs. Divided by the interval it
   is the share of one core the monitor takes, the most it can slow a step that runs on
   that core.
B. Step time, A/B: a training-step loop (the ResNet-50 ``tiny`` model, batch 32, one torch
   thread) is timed alone and next to a monitor process (interval 1 s, ten times podrun's
   default rate), alternating; the medians and their ratio are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pythonpath import with_repo  # bench/pythonpath.py, beside this script

REPO = Path(__file__).resolve().parent.parent


def new_run(folder: Path) -> tuple[str, str]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client.create_run(client.create_experiment("bench")).info.run_id


def monitor_child(uri: str, run_id: str, interval: float, window: float) -> dict:
    """Run the monitor for ``window`` seconds in this process; its CPU seconds and sample count."""
    import mlflow  # noqa: F401 - imported before the measurement, as in the sender

    from jobs.tracking.system_metrics import start_monitor, stop_monitor

    monitor = start_monitor(run_id, uri, "node_0", interval)  # set-up (once per run) is not counted
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(window)
    after = resource.getrusage(resource.RUSAGE_SELF)
    stop_monitor(monitor)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": cpu, "samples": window / interval}


def steps_child(steps: int) -> float:
    """Median seconds of one training step of the tiny ResNet (one torch thread)."""
    import torch

    from jobs.contract.config_io import deep_merge, read_yaml
    from jobs.contract.recipe import Recipe
    from jobs.models.resnet import build_resnet

    torch.set_num_threads(1)
    raw = read_yaml(REPO / "recipes" / "resnet50.yaml")
    model = build_resnet(Recipe.model_validate(deep_merge(raw, raw["presets"]["tiny"])).model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    times = []
    for step in range(steps + 3):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= 3:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def child(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", *argv], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": with_repo(REPO)})


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode})")
    return json.loads(out.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "monitor":
            print(json.dumps(monitor_child(rest[0], rest[1], float(rest[2]), float(rest[3]))))
        else:
            print(json.dumps({"step_s": steps_child(int(rest[0]))}))
        return 0
    load_before = os.getloadavg()[0]
    per_sample: dict[float, list[float]] = {1.0: [], 10.0: []}
    alone, beside = [], []
    with tempfile.TemporaryDirectory(prefix="podrun-sysmetrics-") as tmp:
        uri, run_id = new_run(Path(tmp))
        for _ in range(args.repeats):
            for interval, window in ((1.0, 20.0), (10.0, 40.0)):
                got = result(child(["monitor", uri, run_id, str(interval), str(window)]))
                per_sample[interval].append(got["cpu_s"] / got["samples"])
            alone.append(result(child(["steps", str(args.steps)]))["step_s"])
            monitor = child(["monitor", uri, run_id, "1.0", "600"])
            time.sleep(8)  # past MLflow's import: only the sampling runs next to the steps
            beside.append(result(child(["steps", str(args.steps)]))["step_s"])
            monitor.kill()
            monitor.communicate()
    print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    for interval, values in per_sample.items():
        share = statistics.median(values) / interval * 100
        print(f"interval {interval:g} s: CPU per sample {', '.join(f'{v * 1000:.1f}' for v in values)} ms "
              f"(median {statistics.median(values) * 1000:.1f} ms) = {share:.2f} % of one core")
    ratio = statistics.median(beside) / statistics.median(alone)
    print(f"step alone {', '.join(f'{v * 1000:.1f}' for v in alone)} ms (median {statistics.median(alone) * 1000:.1f})")
    print(f"step beside a 1 s monitor {', '.join(f'{v * 1000:.1f}' for v in beside)} ms "
          f"(median {statistics.median(beside) * 1000:.1f}); ratio {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
