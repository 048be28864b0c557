"""The ``podrun`` command line.

    podrun data digits data/digits            # a small real data set (scikit-learn's digits)
    podrun launch recipes/jobs/resnet50-tiny.yaml
    podrun render recipes/jobs/resnet50-tiny.yaml --set train.epochs=3
    podrun runs | podrun status ID | podrun logs ID -f | podrun cancel ID
    podrun sync ID                            # send MLflow records kept while the server was down
    podrun init                               # copy the bundled cluster.yaml and a job spec here to edit
    podrun preflight recipes/jobs/resnet50-superpod.yaml   # check the nodes a job would get, print a table
    podrun export RUN_ID --format onnx        # the run's registered model as ONNX, checked and logged back

Errors the user can fix print one line (``podrun: error: ...``) and exit with one of the
codes in :mod:`jobs.contract.exit_codes` (64: usage or config, 69: the scheduler); ``launch``
returns the job's own exit code.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.contract import exit_codes
from orchestrator.backends import get_backend
from orchestrator.errors import BackendError, PodrunError
from orchestrator.spec.backend_names import BACKENDS

if TYPE_CHECKING:
    from orchestrator.launch import LaunchRequest

EXIT_USAGE = exit_codes.CONFIG_ERROR


class _Parser(argparse.ArgumentParser):
    """argparse with podrun's usage exit code (argparse's own 2 means "target not reached" here)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job spec (recipes/jobs/*.yaml) or RECIPE[:PRESET], e.g. resnet50:tiny")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (train.epochs=5), a job key (nodes=2) or profile.KEY")
    parser.add_argument("--backend", choices=sorted(BACKENDS), help="default: the profile's scheduler")
    parser.add_argument("--on", choices=["slurm"], dest="on",
                        help="with --backend ray: start a Ray cluster inside a Slurm allocation and run there")
    parser.add_argument("--cluster-file", help="default: $PODRUN_CLUSTER_FILE, ./cluster.yaml, "
                                               "~/.config/podrun/cluster.yaml, the bundled one")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="JOB_ID",
                        help="continue the latest (or the given) earlier job of this name from its checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="podrun", description="Launch training recipes from one machine to a SuperPOD.")
    sub = parser.add_subparsers(dest="command", required=True)
    launch = sub.add_parser("launch", help="run a job")
    _job_arguments(launch)
    launch.add_argument("--detach", action="store_true", help="return once submitted; follow with 'podrun logs ID -f'")
    render = sub.add_parser("render", help="print exactly what 'launch' would run, without running it")
    _job_arguments(render)
    for command in (launch, render, *_sweep_arguments(sub)):
        command.add_argument("--no-preflight", action="store_true", help="skip the node checks for this launch")
    preflight = sub.add_parser("preflight", help="check the nodes a job would get (GPUs, InfiniBand, collectives, "
                                                 "storage, software) and print a node x check table")
    _job_arguments(preflight)
    for name, text in (("status", "show a job's state"), ("cancel", "stop a job (ranks checkpoint first)")):
        sub.add_parser(name, help=text).add_argument("job_id")
    logs = sub.add_parser("logs", help="print a job's log")
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--rank", type=int, default=0)
    runs = sub.add_parser("runs", help="list recent jobs")
    runs.add_argument("-n", type=int, default=20)
    sync = sub.add_parser("sync", help="send MLflow records that were kept while the tracking server was down")
    sync.add_argument("job_id")
    _predict_arguments(sub)
    export = sub.add_parser("export", help="export a run's registered model (ONNX), check it and log it to the run")
    export.add_argument("run_id", help="the MLflow run id (printed at the end of a launch)")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--tracking-uri", help="default: the store of the podrun job that made the run")
    export.add_argument("--output", type=Path, default=Path("exports"), help="folder for the files (default: exports)")
    data = sub.add_parser("data", help="write a data set")
    data_sub = data.add_subparsers(dest="dataset", required=True)
    digits = data_sub.add_parser("digits", help="scikit-learn's digits as ImageNet-layout JPEGs (real, small)")
    digits.add_argument("dir", type=Path)
    digits.add_argument("--image-size", type=int, default=32)
    digits.add_argument("--overwrite", action="store_true")
    synthetic = data_sub.add_parser("synthetic", help="ImageNet-sized JPEGs for throughput work")
    synthetic.add_argument("dir", type=Path)
    synthetic.add_argument("--train-images", type=int, default=2048)
    synthetic.add_argument("--val-images", type=int, default=256)
    synthetic.add_argument("--classes", type=int, default=16)
    toy = data_sub.add_parser("translation-toy", help="a small parallel corpus of two artificial languages "
                                                      "(reordering + word mapping) and its tokenizer")
    toy.add_argument("dir", type=Path)
    toy.add_argument("--train-pairs", type=int, default=20000)
    toy.add_argument("--valid-pairs", type=int, default=500)
    toy.add_argument("--test-pairs", type=int, default=500)
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--overwrite", action="store_true")
    _init_arguments(sub)
    return parser


def _init_arguments(sub) -> None:
    from orchestrator.spec.paths import INIT_JOB

    init = sub.add_parser("init", help="copy the bundled cluster.yaml and a job spec into a folder to edit")
    init.add_argument("dir", nargs="?", type=Path, default=Path("."), help="default: this folder")
    init.add_argument("--job", default=INIT_JOB, help=f"which bundled job spec (default {INIT_JOB})")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")


def _predict_arguments(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", help="predict time-to-train and GPU-hours at several node counts, or check "
                                             "the predictor against published results (--validate FILE)")
    _job_arguments(predict)
    for action in predict._actions:  # `podrun predict --validate FILE` needs no job: cmd_predict asks for one
        if action.dest == "job":
            action.nargs, action.required, action.default = "?", False, None
    predict.add_argument("--nodes", help="node counts, e.g. 1,2,4,8 (needed with a JOB)")
    predict.add_argument("--validate", type=Path, metavar="FILE",
                         help="check the predictor against a results file in the bench/mlperf/resnet_results.yaml "
                              "format instead (each round's step floor fitted on the other rounds)")
    predict.add_argument("--throughput", type=float, help="items/s per GPU on one node (default: the fastest "
                         "MLflow run of the recipe on this profile, else the profile's throughput: table)")
    predict.add_argument("--rcp-round", help="MLPerf round whose RCPs give ResNet-50's epochs (default: newest)")
    predict.add_argument("--allreduce", choices=["ring", "tree", "auto"], default="auto",
                         help="the allreduce algorithm to model (auto: the faster at each scale, as NCCL picks)")
    predict.add_argument("--plot", type=Path, help="where the PNG goes (default: $PODRUN_HOME/predict/NAME.png)")
    predict.add_argument("--log", action="store_true", help="log the table and plot as an MLflow run")


def _sweep_arguments(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """``sweep`` and ``report``; returns the parsers that launch jobs (``sweep``)."""
    sweep = sub.add_parser("sweep", help="run a job at several scales (one job each) and report how it scales")
    _job_arguments(sweep)
    sweep.add_argument("--nodes", default="1", help="node counts, e.g. 1,2,4")
    sweep.add_argument("--tasks-per-node", help="ranks per node to try, e.g. 1,2 (local: one job per rank count)")
    report = sub.add_parser("report", help="build a sweep's scaling report from MLflow (table, plots, HTML)")
    report.add_argument("run", metavar="RUN_OR_EXPERIMENT", help="the sweep's parent run id, or an experiment name")
    report.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the local store")
    report.add_argument("--out", type=Path, help="also keep the files in this folder")
    return [sweep]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        # as for `python -m`: a recipe's task module (task: MODULE:CLASS) may live in this folder
        sys.path.append(str(Path.cwd()))
    try:
        return COMMANDS[args.command](args)
    except PodrunError as exc:
        print(f"podrun: error: {exc}", file=sys.stderr)
        if exc.exit_code != exit_codes.FAILED:  # one of its own, e.g. a checkpoint folder in use
            return exc.exit_code
        return exit_codes.BACKEND_ERROR if isinstance(exc, BackendError) else EXIT_USAGE
    except KeyboardInterrupt:
        print("podrun: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED


# --------------------------------------------------------------------------- commands


def _request(args: argparse.Namespace) -> LaunchRequest:
    from orchestrator.launch import LaunchRequest

    return LaunchRequest(args.job, args.assignments, backend=args.backend, on=args.on, cluster_file=args.cluster_file,
                         resume=args.resume, preflight=not getattr(args, "no_preflight", False),
                         detach=getattr(args, "detach", False))


def _resolve(args: argparse.Namespace, job_id: str | None = None):
    from orchestrator.launch import resolve

    return resolve(_request(args), job_id=job_id)


def cmd_render(args: argparse.Namespace) -> int:
    from orchestrator.launch import scheduler
    from orchestrator.spec.job_env import expected_message
    from orchestrator.spec.paths import annotate

    plan = _resolve(args)
    backend = scheduler(plan, args.on)
    print(annotate(get_backend(backend).render(plan), plan.sources), end="")
    if expected_message(plan):  # secrets and ${VAR} are read when the script runs
        print(f"podrun: {expected_message(plan)}", file=sys.stderr)
    if backend == "slurm":
        _prepare_log_folder(plan)
    return 0


def _prepare_log_folder(plan) -> None:
    """Slurm opens ``#SBATCH --output`` before the script runs, so its folder must exist at ``sbatch``.

    On this machine's file system podrun makes it (readable by its owner only); for a cluster
    reached over SSH it says what to run there.
    """
    from jobs.contract.private_files import private_dir

    logs = Path(plan.job.job_dir) / "logs"
    if plan.profile.slurm.login is not None:
        print(f"podrun: on the cluster, before sbatch: mkdir -p -m 700 {shlex.quote(str(logs))}", file=sys.stderr)
        return
    try:
        private_dir(logs)
    except OSError as exc:
        print(f"podrun: could not create {logs} ({exc.strerror}); create it before sbatch", file=sys.stderr)


def cmd_launch(args: argparse.Namespace) -> int:
    from orchestrator.launch import launch

    return launch(_request(args))


def cmd_preflight(args: argparse.Namespace) -> int:
    from orchestrator.launch import scheduler
    from orchestrator.preflight_cmd import preflight_job_id, run_preflight

    plan = _resolve(args, job_id=preflight_job_id(args.job, args.assignments))
    return run_preflight(plan, scheduler(plan, args.on))


def _record(job_id: str):
    from orchestrator.spec.jobstore import find_record
    from orchestrator.spec.paths import podrun_home

    record = find_record(podrun_home(), job_id)
    return get_backend(record.backend), record


def cmd_status(args: argparse.Namespace) -> int:
    backend, record = _record(args.job_id)
    record = backend.status(record)
    print(f"{record.job_id}  {record.state}  {record.detail}".rstrip())
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    backend, record = _record(args.job_id)
    for line in backend.logs(record, rank=args.rank, follow=args.follow):
        print(line, flush=True)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from orchestrator.spec.paths import podrun_home
    from orchestrator.sweep import cancel_sweep, find_sweep

    sweep = find_sweep(podrun_home(), args.job_id)
    if sweep is not None:
        print(cancel_sweep(podrun_home(), sweep) + f"; continue it with: podrun sweep {sweep.job} ... --resume")
        return 0
    backend, record = _record(args.job_id)
    backend.cancel(record)
    print(f"cancelling {record.job_id}: ranks write a checkpoint and stop; resume with --resume")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from orchestrator.spec.jobstore import list_records
    from orchestrator.spec.paths import podrun_home

    records = list_records(podrun_home())[: args.n]
    if not records:
        print(f"no jobs yet under {podrun_home()}")
        return 0
    for record in records:
        try:
            record = get_backend(record.backend).status(record)
        except PodrunError:
            pass
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.submitted_at))
        print(f"{record.job_id:<44} {record.state:<10} {record.backend:<6} {record.world_size:>4} ranks  {when}  "
              f"{record.detail}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Send what a job's spool kept: records from an outage, and the model and run page a job left for after its ranks.

    The spool is the job's folder on the cluster's storage when this machine sees it. A job
    that has ended also gets ``device_release_s`` (to the end the scheduler recorded) if
    nobody measured it.
    """
    from jobs.tracking.spool import spool_pending
    from jobs.tracking.tracker import replay_spool

    backend, record = _record(args.job_id)
    spool = Path(record.extra.get("cluster_job_dir", record.job_dir)) / "mlflow-spool"
    if not spool_pending(spool):
        print(f"{record.job_id}: nothing kept, every record reached MLflow")
        return 0
    try:
        record = backend.status(record)
    except PodrunError:  # the scheduler is away: the records go anyway, without the release time
        pass
    ended = record.extra.get("ended_at") or record.finished_at
    sent = replay_spool(spool, released_at=ended, run_info_dir=Path(record.checkpoint_dir))
    print(f"{record.job_id}: sent {sent} kept record(s) to MLflow")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from orchestrator.errors import ConfigError
    from orchestrator.spec.paths import podrun_home
    from orchestrator.studies import predict

    if args.validate:
        if args.job or args.nodes:
            raise ConfigError("--validate FILE checks the predictor on a results file: give it without a JOB and "
                              "--nodes")
        from orchestrator.studies.predict_validate import validate_report

        print(validate_report(args.validate))
        return 0
    if not args.job or not args.nodes:
        raise ConfigError("podrun predict needs a JOB and --nodes (podrun predict resnet50:superpod --nodes 1,8), "
                          "or --validate FILE")
    plan = _resolve(args)
    result = predict.forecast(plan, predict.parse_nodes(args.nodes), args.throughput, args.rcp_round,
                              algorithm=args.allreduce)
    table = predict.format_forecast(result, plan.recipe.task_class().unit)
    print(f"{plan.job.name} on {plan.profile.name} ({plan.job.tasks_per_node} GPUs per node):\n{table}")
    plot = predict.plot_forecast(result, args.plot or podrun_home() / "predict" / f"{plan.job.name}.png",
                                 f"{plan.job.name} on {plan.profile.name}: predicted time to train")
    print(f"plot: {plot}")
    if args.log:
        print(f"logged to MLflow run {predict.log_forecast(plan, result, table, plot)} in {plan.tracking_uri}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator.studies.predict import parse_nodes
    from orchestrator.sweep import run_sweep

    tasks = parse_nodes(args.tasks_per_node, "--tasks-per-node") if args.tasks_per_node else None
    return run_sweep(_request(args), parse_nodes(args.nodes), tasks, resume=args.resume is not None)


def cmd_report(args: argparse.Namespace) -> int:
    import os

    from orchestrator.spec.paths import podrun_home
    from orchestrator.studies.report import build_report

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{podrun_home() / 'mlflow.db'}"
    print(build_report(uri, args.run, args.out).text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.export import export_onnx, find_tracking_uri

    uri = find_tracking_uri(args.run_id, args.tracking_uri)
    for line in export_onnx(args.run_id, uri, args.output / args.run_id):
        print(line)
    print(f"logged to run {args.run_id} under onnx/ (tag podrun.onnx)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from orchestrator.datasets import images as datasets

    if args.dataset == "digits":
        summary = datasets.write_digits(args.dir, image_size=args.image_size, overwrite=args.overwrite)
    elif args.dataset == "translation-toy":
        from orchestrator.datasets.translation_toy import write_translation_toy

        summary = write_translation_toy(args.dir, train_pairs=args.train_pairs, valid_pairs=args.valid_pairs,
                                        test_pairs=args.test_pairs, seed=args.seed, overwrite=args.overwrite)
    else:
        summary = datasets.write_synthetic(args.dir, train_images=args.train_images, val_images=args.val_images,
                                           classes=args.classes)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from orchestrator.spec.paths import config_dir, display, init_files

    written = init_files(args.dir, job=args.job, force=args.force)
    print("wrote " + ", ".join(display(path) for path in written))
    print(f"edit them, then: podrun launch {display(written[1])}   (podrun reads ./cluster.yaml first, "
          f"then {display(config_dir())}/cluster.yaml, then the bundled one)")
    return 0


COMMANDS = {
    "launch": cmd_launch, "render": cmd_render, "status": cmd_status, "logs": cmd_logs,
    "cancel": cmd_cancel, "runs": cmd_runs, "sync": cmd_sync, "data": cmd_data, "init": cmd_init,
    "preflight": cmd_preflight, "export": cmd_export,
}
COMMANDS |= {"predict": cmd_predict, "sweep": cmd_sweep, "report": cmd_report}
