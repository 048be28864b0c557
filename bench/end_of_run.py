"""What the run page adds after ``run_stop``: logging + registering the model, the description and charts, ONNX export.

    python bench/end_of_run.py                       # tiny ResNet, ResNet-50 and tiny Transformer, 3 repeats
    python bench/end_of_run.py --models resnet50 --repeats 5

For each model, fresh weights are written as a final checkpoint and a run with a
realistic metric history is created in a fresh sqlite store. Then, in a fresh process
each time (as rank 0's sender is one, with MLflow already imported), it times:

- ``model``: :func:`jobs.tracking.model_registry.log_trained_model` (load the checkpoint, build the
  model, ``torch.export``, upload, register, version description);
- ``run_page``: :func:`jobs.tracking.run_page.publish_run_page` (read the run back, description, 3 PNG charts);
- ``export``: ``podrun export RUN_ID --format onnx`` as a user runs it (a whole process).

Rounds alternate between the models; min/median/max are reported with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pythonpath import with_repo  # bench/pythonpath.py, beside this script

REPO = Path(__file__).resolve().parent.parent
MODELS = {  # name: (job reference, overrides, input arrays)
    "resnet50-tiny": ("resnet50:tiny", [], {"images": ((8, 3, 32, 32), "float32")}),
    "resnet50": ("resnet50", [], {"images": ((8, 3, 224, 224), "float32")}),
    "transformer-tiny": ("transformer:tiny", [], {"src": ((8, 24), "int64"), "tgt_in": ((8, 24), "int64")}),
}


def make_run(name: str, folder: Path, uri: str) -> tuple[str, dict]:
    """A finished run of ``name`` (metrics of 40 epochs) and its model record."""
    import numpy as np

    from jobs.contract import exit_codes
    from jobs.rank.checkpoint import save_checkpoint
    from jobs.tracking.model_registry import model_record
    from jobs.tracking.run_page import run_page_record
    from jobs.tracking.run_tracking import job_params
    from jobs.tracking.tracker import Tracker
    from orchestrator.spec.resolve import load_job

    ref, sets, arrays = MODELS[name]
    os.environ["MLFLOW_TRACKING_URI"] = uri
    job = load_job(ref, sets).job
    model = job.recipe.task_class().model_for(job.recipe)
    rng = np.random.default_rng(0)
    inputs = {key: (rng.normal(size=shape).astype(dtype) if dtype == "float32" else rng.integers(4, 320, shape))
              for key, (shape, dtype) in arrays.items()}
    np.savez(folder / "model-inputs.npz", **inputs)
    checkpoint = save_checkpoint(folder / "ckpt", {"model": model.state_dict()}, global_step=1000)
    tracker = Tracker(uri, job.experiment, folder / "spool", run_name=name)
    tracker.log_params(job_params(job))
    for step in range(0, 1000, 10):
        tracker.log_metrics({"train_loss": 3.0 - step / 500, "throughput_img_per_s": 1000.0}, step=step)
    for epoch in range(1, 41):
        tracker.log_metrics({"eval_top1": epoch / 40, "eval_bleu": epoch}, step=epoch)
    tracker.log_metrics({"time_to_train_s": 600.0, "reached_target": 1.0}, step=1000)
    tracker.finish("FINISHED")
    record = model_record(job, checkpoint, folder / "model-inputs.npz", f"bench {name}")
    page = run_page_record(job, exit_codes.SUCCESS)
    return tracker.run_id, {"model": record, "run_page": page}


def child(kind: str, uri: str, run_id: str, record: dict) -> float:
    """In a fresh process with MLflow imported (as the sender): the seconds ``kind`` takes."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    client.get_run(run_id)  # the store is open, as in the sender
    started = time.perf_counter()
    if kind == "model":
        from jobs.tracking.model_registry import log_trained_model

        log_trained_model(client, run_id, uri, record)
    else:
        from jobs.tracking.run_page import publish_run_page

        publish_run_page(client, run_id, record)
    return time.perf_counter() - started


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": with_repo(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"{argv[1:5]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - started, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "URI", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"seconds": child(*args.child, json.loads(sys.stdin.readline()))}))
        return 0
    names = args.models.split(",")
    results: dict[tuple[str, str], list[float]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="podrun-bench-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for repeat in range(args.repeats):
            for name in names:
                folder = Path(tmp) / f"{name}-{repeat}"
                folder.mkdir()
                run_id, records = make_run(name, folder, uri)
                for kind in ("model", "run_page"):
                    proc = subprocess.run([sys.executable, __file__, "--child", kind, uri, run_id], cwd=REPO,
                                          input=json.dumps(records[kind]) + "\n", capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise SystemExit(proc.stderr[-3000:])
                    results.setdefault((name, kind), []).append(json.loads(proc.stdout.splitlines()[-1])["seconds"])
                export = [sys.executable, "-m", "orchestrator", "export", run_id, "--tracking-uri", uri,
                          "--output", str(folder / "onnx")]
                results.setdefault((name, "export"), []).append(timed(export)[0])
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    print("| model | step | runs (s) | min | median | max |\n|---|---|---|---:|---:|---:|")
    for (name, kind), values in results.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {kind} | {runs} | {min(values):.1f} | {statistics.median(values):.1f} | {max(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
