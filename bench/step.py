"""podrun's training loop against a bare PyTorch loop: every precision, memory format and compile mode.

    python bench/step.py                                  # the whole grid, 1 and 2 ranks, 5 repeats
    python bench/step.py --models resnet-tiny --precisions fp32 --compile off --ranks 1,2

Each row is one configuration (model x ranks x precision x memory format x compile). It
runs in fresh processes: 1 rank as ``python bench/step_worker.py``, 2 ranks through
``torchrun --standalone --nproc-per-node 2``, the same launcher for both loops. Inside
each rank :mod:`bench.step_worker` runs podrun's real loop (``jobs.train.Trainer.run()``,
with its progress lines, stop votes, MLflow tracking and MLPerf log) and the ~20-line
bare loop of :mod:`bench.bare_step` on the same model config, batches, precision, memory
format and compile mode, in interleaved windows of ``--window`` steps; the ratio
podrun/bare is taken per pair of windows and reported as min/median/max over
``--repeats`` pairs. Each row then stops podrun's loop as a preemption would and resumes
it from the checkpoint ("resume ok"). ``--tracking on,off`` adds, after each row, the same
row without rank 0's MLflow sender and system-metrics monitor, to see what they cost. A mode
that cannot run on this device is reported as podrun's one-line error. CUDA is used when
present (2-rank rows need 2 GPUs).

Models: ``resnet-tiny`` (the ``resnet50:tiny`` preset on synthetic 32 px images, batch
32), ``resnet50-32px`` (ResNet-50 at full width and depth on synthetic 32 px images, batch
16), ``transformer-tiny`` (the ``transformer:tiny`` preset on the toy corpus, which is
written once into ``--data``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.pythonpath import with_repo  # noqa: E402
from jobs.contract.errors import PodrunError  # noqa: E402

MODELS: dict[str, tuple[str, list[str]]] = {
    "resnet-tiny": ("resnet50:tiny", ["data.backend=synthetic"]),
    "resnet50-32px": ("resnet50:tiny", ["data.backend=synthetic", "model.layers=[3,4,6,3]", "model.width=64",
                                        "model.small_stem=false", "train.batch_size=16"]),
    "transformer-tiny": ("transformer:tiny", []),
}
WORKER = REPO / "bench" / "step_worker.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet-tiny,resnet50-32px,transformer-tiny")
    parser.add_argument("--precisions", default="fp32,tf32,amp-bf16,amp-fp16" if cuda else "fp32,amp-bf16,amp-fp16")
    parser.add_argument("--formats", default="channels_last,nchw", help="ResNet memory formats")
    parser.add_argument("--compile", default="off,on")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved window pairs per row")
    parser.add_argument("--window", type=int, default=10, help="optimizer steps per timed window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "podrun-bench",
                        help="where the toy corpus is written once (transformer rows)")
    parser.add_argument("--profile", action="store_true", help="keep torch.profiler tables of one window each")
    parser.add_argument("--stop-check-every", type=int, default=10,
                        help="train.stop_check_every (the recipe default); lower it for short mode checks")
    parser.add_argument("--row-timeout", type=int, default=3600,
                        help="seconds until a row is reported as timed out and its processes killed; the grid goes on")
    parser.add_argument("--tracking", default="on",
                        help="on,off: off runs podrun's loop without rank 0's MLflow sender and system-metrics "
                             "monitor, to see what they cost (each on/off pair runs back to back)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    for name in ("compile", "tracking"):
        if not set(getattr(args, name).split(",")) <= {"on", "off"}:
            parser.error(f"--{name} takes on, off or on,off, not {getattr(args, name)!r}")
    return args


def rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    found = []
    for model in args.models.split(","):
        formats = args.formats.split(",") if model.startswith("resnet") else ["-"]
        for ranks in map(int, args.ranks.split(",")):
            for precision in args.precisions.split(","):
                for memory_format in formats:
                    for compiled in args.compile.split(","):
                        for tracking in args.tracking.split(","):
                            found.append({"model": model, "ranks": ranks, "precision": precision,
                                          "format": memory_format, "compile": compiled, "tracking": tracking})
    return found


def settings(row: dict[str, Any], args: argparse.Namespace, stop_check_every: int) -> list[str]:
    """The job's ``--set`` values: the model's, the row's mode, and one epoch long enough for the windows."""
    ref, model_sets = MODELS[row["model"]]
    sets = [*model_sets, f"tasks_per_node={row['ranks']}", f"train.precision={row['precision']}",
            f"train.compile={str(row['compile'] == 'on').lower()}", "train.epochs=1", "eval.start_epoch=99",
            f"train.stop_check_every={stop_check_every}"]
    if row["format"] != "-":
        sets.append(f"train.channels_last={str(row['format'] == 'channels_last').lower()}")
    if ref.startswith("resnet"):
        batch = 16 if row["model"] == "resnet50-32px" else 32
        steps = args.warmup + args.repeats * args.window * 2 + 4 * stop_check_every + 4  # the resume check too
        sets.append(f"data.synthetic_samples={batch * row['ranks'] * steps}")
    return sets


def resolve(row: dict[str, Any], args: argparse.Namespace) -> Path:
    """Write the row's resolved job (as ``podrun launch`` would) and return its config path.

    Raises:
        PodrunError: podrun refuses the mode on this device (the one-line reason).
    """
    from jobs.contract.job import CONFIG_FILE, write_resolved
    from orchestrator.spec.resolve import load_job

    ref = MODELS[row["model"]][0]
    job = load_job(ref, settings(row, args, stop_check_every=args.stop_check_every)).job
    path = Path(job.job_dir) / CONFIG_FILE
    write_resolved(job, path)
    return path


def worker_command(row: dict[str, Any], config: Path, out: Path, args: argparse.Namespace) -> list[str]:
    common = [str(WORKER), str(config), "--out", str(out), "--window", str(args.window), "--repeats",
              str(args.repeats), "--warmup", str(args.warmup), *(["--profile"] if args.profile else []),
              *(["--no-tracking"] if row.get("tracking") == "off" else [])]
    if row["ranks"] == 1:
        return [sys.executable, *common]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    return [torchrun, "--standalone", "--nproc-per-node", str(row["ranks"]), *common]


def kill_tree(pid: int) -> None:
    """SIGKILL a row's process and every descendant: torchrun starts each rank in a session of its own."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=10)


def run_row(row: dict[str, Any], args: argparse.Namespace, home: Path) -> dict[str, Any]:
    try:
        config = resolve(row, args)
    except PodrunError as exc:
        return {**row, "error": f"podrun refuses: {exc}"}
    out = config.parent / "bench.json"
    env = dict(os.environ, PODRUN_HOME=str(home), PYTHONPATH=with_repo(REPO), PODRUN_DATA=str(args.data))
    proc = subprocess.Popen(worker_command(row, config, out, args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=args.row_timeout)
    except subprocess.TimeoutExpired:  # one stuck mode must not lose the rows after it
        kill_tree(proc.pid)
        (config.parent / "bench.log").write_text(proc.communicate()[0])
        return {**row, "error": f"timed out after {args.row_timeout} s (--row-timeout); its log: "
                                f"{config.parent / 'bench.log'}"}
    (config.parent / "bench.log").write_text(stdout)
    if proc.returncode != 0 or not out.is_file():
        tail = [line for line in stdout.splitlines() if line.strip()][-3:]
        return {**row, "error": f"exit {proc.returncode}: {' | '.join(tail)}"[:400]}
    return {**row, **json.loads(out.read_text()), "log": str(config.parent)}


def spread(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def format_row(result: dict[str, Any]) -> str:
    unit = "tok/s" if result["model"].startswith("transformer") else "img/s"
    head = (f"| {result['model']} | {result['ranks']} | {result['precision']} | {result['format']} | "
            f"{result['compile']} |")
    took = f"row {result['seconds']:.0f} s; " if "seconds" in result else ""
    took += "MLflow off (no sender, no monitor); " if result.get("tracking") == "off" else ""
    if "error" in result:
        return f"{head} - | - | - | {took}{result['error']} |"
    cpu = f"CPU time: {spread(result['cpu_ratio'])}; " if result.get("device") == "cpu" else ""
    return (f"{head} {statistics.median(result['bare']):,.1f} {unit} | {statistics.median(result['podrun']):,.1f} "
            f"{unit} | {spread(result['ratio'])} | {took}{cpu}resume {result['resume']} |")


TABLE_HEAD = ("| model | ranks | precision | format | compile | bare (median) | podrun (median) "
              "| podrun/bare min / median / max | notes |\n|---|---|---|---|---|---|---|---|---|")


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
            f"torch {torch.__version__}")


def ensure_toy_corpus(data: Path) -> None:
    if not (data / "translation-toy" / "train.en").is_file():
        from orchestrator.datasets.translation_toy import write_translation_toy

        write_translation_toy(data / "translation-toy", overwrite=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "transformer-tiny" in args.models:
        ensure_toy_corpus(args.data)
    home = Path(tempfile.mkdtemp(prefix="podrun-step-bench-"))
    os.environ.update(PODRUN_HOME=str(home), PODRUN_DATA=str(args.data))  # where load_job puts and finds things
    print(f"# {machine()}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    print(TABLE_HEAD, flush=True)
    results = []
    for row in rows(args):
        began = time.monotonic()
        results.append({**run_row(row, args, home), "seconds": round(time.monotonic() - began, 1)})
        print(format_row(results[-1]), flush=True)
    print(f"# load average {os.getloadavg()[0]:.2f} at the end; runs and logs under {home}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
