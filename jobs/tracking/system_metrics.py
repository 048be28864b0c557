"""Per-node system metrics in the job's MLflow run: CPU, memory, disk, network, and GPUs (NVML).

MLflow's own monitor (``SystemMetricsMonitor``, ``psutil`` and ``nvidia-ml-py``) samples
every ``system_metrics_interval_s`` seconds and logs ``system/node_<i>/...`` metrics, the
names the MLflow UI groups by node. One monitor runs per node, outside the training
processes:

- node 0: inside rank 0's MLflow sender (``python -m jobs.tracking.sender ... --system-metrics node_0``);
- every other node: its local rank 0 starts ``python -m jobs.tracking.system_metrics``
  (:func:`spawn_node_monitor`), which waits for the run id in ``run.json`` (rank 0's
  sender writes it into the shared checkpoint folder), logs until its stdin closes (its
  rank ended or died), then exits.

A monitor that cannot start (no ``psutil``, no run id in time) warns once; training is
never affected.

MLflow's, SQLAlchemy's and alembic's own log lines and prints from these processes (and from
rank 0's sender) go to ``logs/tracking.log`` in the job folder (:func:`divert_library_output`),
not to the rank log that ``podrun launch`` shows; podrun's own lines stay on the rank log.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from jobs.contract.job import ResolvedJob
from jobs.contract.placement import RankInfo

log = logging.getLogger("jobs.tracking.tracker")

RUN_ID_WAIT_S = 600  # how long another node's monitor waits for rank 0 to create the run
PODRUN_LOGGERS = ("jobs", "orchestrator", "podrun")  # what stays on the rank log
LIBRARY_LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # MLflow's own format


def tracking_log(job_dir: str | Path, node: int = 0) -> Path:
    """Where a node's MLflow and SQLAlchemy output goes: ``logs/tracking.log``, ``logs/tracking.node_1.log``, ...

    One file per node, because appends from several hosts to one file on shared storage can interleave.
    """
    name = "tracking.log" if node == 0 else f"tracking.{node_id(node)}.log"
    return Path(job_dir) / "logs" / name


def divert_library_output(log_file: Path | None) -> None:
    """Send this process's library output to ``log_file``; podrun's own log lines stay on stderr (the rank log).

    MLflow and SQLAlchemy log through handlers of their own and print ("Successfully
    registered model ..." is a print to stderr), so file descriptors 1 and 2 become
    ``log_file``: their lines, warnings and any C-level output land there. Loggers under
    ``jobs`` (podrun's) write to a copy of the stderr this process started with. Without
    ``log_file``, or where it cannot be created (said once), everything goes to stderr.
    """
    rank_log, problem = sys.stderr, None
    if log_file is not None:
        try:
            rank_log = _redirect_output(log_file)
        except OSError as exc:
            problem = f"tracking: MLflow's own output stays here: {log_file}: {exc.strerror or exc}"
    own = logging.StreamHandler(rank_log)
    own.addFilter(_is_podrun)
    libraries = logging.StreamHandler(sys.stderr)  # fd 2: the file
    libraries.setFormatter(logging.Formatter(LIBRARY_LINE_FORMAT, "%Y/%m/%d %H:%M:%S"))
    libraries.addFilter(lambda record: not _is_podrun(record))
    root = logging.getLogger()
    root.handlers[:] = [own, libraries]
    root.setLevel(logging.WARNING)
    if problem:
        log.warning(problem)


def _redirect_output(log_file: Path) -> TextIO:
    """Point file descriptors 1 and 2 at ``log_file``; returns a stream on the stderr they replaced."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rank_log = os.fdopen(os.dup(2), "w", buffering=1, errors="backslashreplace")
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return rank_log


def _is_podrun(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in PODRUN_LOGGERS


def node_id(index: int) -> str:
    """The node's name in metric keys: ``node_0``, ``node_1`` (what the UI's node filter parses)."""
    return f"node_{index}"


def node_index(info: RankInfo, tasks_per_node: int, env: dict[str, str] | None = None) -> int:
    """This rank's node: the launcher's node rank when it sets one, else rank // tasks per node."""
    env = os.environ if env is None else env
    for name in ("SLURM_NODEID", "GROUP_RANK", "NODE_RANK"):
        if env.get(name, "").isdigit():
            return int(env[name])
    return info.rank // max(tasks_per_node, 1)


def sender_args(job: ResolvedJob) -> tuple[str, ...]:
    """Rank 0's sender's arguments from the job: where MLflow's own output goes, and node 0's monitor."""
    args = ("--log-file", str(tracking_log(job.job_dir)))
    if job.system_metrics_interval_s <= 0:
        return args
    return (*args, "--system-metrics", node_id(0), "--system-metrics-interval", str(job.system_metrics_interval_s))


def start_monitor(run_id: str, tracking_uri: str, node: str, interval_s: float) -> Any:
    """MLflow's system-metrics monitor for ``run_id``, started; None (with a warning) if it cannot run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                       resume_logging=True, node_id=node, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as exc:  # noqa: BLE001 - e.g. psutil missing: no system metrics, training goes on
        log.warning("tracking: no system metrics for %s (%s: %s)", node, type(exc).__name__, exc)
        return None


def stop_monitor(monitor: Any) -> None:
    """Stop a monitor (it logs what it sampled last); never raises."""
    if monitor is None:
        return
    try:
        monitor.finish()
    except Exception as exc:  # noqa: BLE001
        log.warning("tracking: stopping the system metrics failed (%s)", exc)


class NodeMonitor:
    """Handle on another node's monitor process; :meth:`close` stops it."""

    def __init__(self, process: subprocess.Popen[bytes], wake_fd: int) -> None:
        self.process, self.wake_fd = process, wake_fd

    def close(self, timeout_s: float = 30) -> None:
        os.close(self.wake_fd)  # end of file on its stdin: it logs its last sample and exits
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()


def spawn_node_monitor(job: ResolvedJob, info: RankInfo) -> NodeMonitor | None:
    """Start this node's monitor if this rank is a node's local rank 0 other than rank 0 (which has the sender)."""
    if job.system_metrics_interval_s <= 0 or info.is_main or info.local_rank != 0:
        return None
    read_fd, wake_fd = os.pipe()
    node = node_index(info, job.tasks_per_node)
    argv = [sys.executable, "-m", "jobs.tracking.system_metrics", "--run-info", job.checkpoint_dir,
            "--tracking-uri", job.tracking_uri, "--node", node_id(node),
            "--interval", str(job.system_metrics_interval_s), "--log-file", str(tracking_log(job.job_dir, node))]
    process = subprocess.Popen(argv, stdin=read_fd, close_fds=True)
    os.close(read_fd)
    return NodeMonitor(process, wake_fd)


def wait_for_run_id(run_info: Path, stdin_fd: int, timeout_s: float = RUN_ID_WAIT_S) -> str | None:
    """The run id once rank 0's sender wrote it to ``run.json``; None if stdin closes first or time runs out."""
    from jobs.contract.checkpoint_index import read_run_info

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run_id = read_run_info(run_info).get("mlflow_run_id")
        if run_id:
            return run_id
        readable, _, _ = select.select([stdin_fd], [], [], 2.0)
        if readable and not os.read(stdin_fd, 1):
            return None
    return None


def ignore_stop_signals() -> None:
    """Leave stop signals to the rank: srun and ``scancel --signal`` send them to the whole job step.

    The rank checkpoints and exits, which closes this process's pipe; only then does it send
    what is left (a preempted attempt's last records) and exit. SIGKILL still ends it.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tracking.system_metrics",
                                     description="log this node's system metrics into the job's MLflow run")
    parser.add_argument("--run-info", type=Path, required=True, help="the job's checkpoint folder (run.json)")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--node", required=True, help="node_<i>")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--log-file", type=Path, help="MLflow's own log lines and prints go here")
    args = parser.parse_args(argv)
    ignore_stop_signals()  # it ends when its rank does (stdin closes)
    divert_library_output(args.log_file)
    run_id = wait_for_run_id(args.run_info, 0)
    if run_id is None:
        return 0
    rank_gone = RankWatch(0)
    monitor = start_monitor(run_id, args.tracking_uri, args.node, args.interval)
    rank_gone.monitoring()
    rank_gone.wait()
    stop_monitor(monitor)
    return 0


class RankWatch:
    """Reads the rank's pipe until it closes; a rank that ends before monitoring has begun ends this process.

    Starting MLflow's monitor takes seconds (MLflow's import, the store). The rank waits for
    this process before it exits, and on Slurm the step (the allocation, its GPUs) lasts until
    it has, so a run that ends meanwhile must not wait for a monitor that has sampled nothing.
    """

    def __init__(self, fd: int) -> None:
        self.fd, self.lock, self.started, self.closed = fd, threading.Lock(), False, threading.Event()
        threading.Thread(target=self._read, name="rank-pipe", daemon=True).start()

    def _read(self) -> None:
        while os.read(self.fd, 4096):  # until the rank closes the pipe (or dies)
            pass
        with self.lock:
            if not self.started:
                os._exit(0)  # nothing sampled, nothing to send
            self.closed.set()

    def monitoring(self) -> None:
        with self.lock:
            self.started = True

    def wait(self) -> None:
        self.closed.wait()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip MLflow's exit handlers (seconds); everything was logged
