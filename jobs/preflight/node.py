"""The preflight runner: ``python -m jobs.preflight CONFIG``, one process per rank of the allocation.

1. Local rank 0 of each node runs the node's own checks (GPU, InfiniBand, storage, software
   versions), each in a thread with its own timeout, and leaves the results in
   ``<job_dir>/preflight/<attempt>/node-<name>.json`` (shared storage, as the job folder is).
2. Every rank joins a process group (rank 0 publishes ``address port`` in the attempt
   folder) for the all-reduce test and the clock offsets.
3. Rank 0 assembles the node x check report, writes it beside the node files and as
   ``<job_dir>/preflight/report.{json,txt}``, prints the table and exits
   :data:`jobs.contract.exit_codes.PREFLIGHT_FAILED` if a node failed.

The attempt is named by ``$PODRUN_PREFLIGHT_ATTEMPT``, else the Slurm job id and restart
count. ``$PODRUN_PREFLIGHT_T0`` (seconds since the epoch, set by the script that starts the
step) makes the recorded duration include the step's start-up.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.contract import exit_codes
from jobs.contract.errors import PodrunError
from jobs.contract.job import ResolvedJob, apply_array_task, apply_node_paths, load_resolved
from jobs.contract.placement import RankInfo, detect_rank_env, expand_hostlist, node_name
from jobs.contract.preflight_spec import CheckName, PreflightSpec
from jobs.preflight.collectives import CollectivesOutcome, evaluate_collectives, run_collectives
from jobs.preflight.gpu import NodeGpus, evaluate_gpus, read_nvml
from jobs.preflight.infiniband import evaluate_infiniband
from jobs.preflight.result import (
    CheckResult,
    Report,
    failed,
    node_file,
    outliers,
    read_json,
    skipped,
    write_json,
)
from jobs.preflight.software import evaluate_software, software_versions
from jobs.preflight.storage import evaluate_storage

RENDEZVOUS_FILE = "rendezvous.json"
POLL_S = 0.2


def say(message: str) -> None:
    print(f"[preflight] {message}", flush=True)


def preflight_dir(job: ResolvedJob) -> Path:
    return Path(job.job_dir) / "preflight"


def attempt_name(env: dict[str, str]) -> str:
    if env.get("PODRUN_PREFLIGHT_ATTEMPT"):
        return env["PODRUN_PREFLIGHT_ATTEMPT"]
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_RESTART_COUNT', '0')}"
    return "run"


def timed(name: str, seconds: float, work: Callable[[], Any]) -> tuple[Any, str | None]:
    """``work()`` in a daemon thread: (its value, None), or (None, why) after an error or ``seconds``.

    A hung call (NVML, a dead NFS mount) is abandoned, not waited for: the process exits
    with ``os._exit`` at the end, so such a thread cannot hold it.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except Exception as exc:  # noqa: BLE001 - a check that breaks fails its node, not the run
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, name=f"preflight-{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return None, f"timed out after {seconds:g} s"
    return box.get("value"), box.get("error")


def _check(spec: PreflightSpec, name: CheckName, work: Callable[[], CheckResult]) -> dict[str, str]:
    if not spec.runs(name):
        result = skipped("not in preflight.checks")
    else:
        value, error = timed(name, getattr(spec.timeouts, name), work)
        result = failed(error) if error else value
    return {"status": result.status, "detail": result.detail}


def local_checks(job: ResolvedJob, spec: PreflightSpec, node: str) -> dict[str, Any]:
    """This node's own checks, as the node file holds them."""
    gpus: NodeGpus | None = None

    def gpu() -> CheckResult:
        nonlocal gpus
        gpus = read_nvml() if spec.gpus_per_node else NodeGpus()
        return evaluate_gpus(gpus, spec.gpus_per_node, spec.gpu_model)

    results = {"node": node, "gpu": _check(spec, "gpu", gpu),
               "infiniband": _check(spec, "infiniband", lambda: evaluate_infiniband(spec.hcas, spec.ib_rate_gbps)),
               "storage": _check(spec, "storage", lambda: evaluate_storage(job, spec.min_free_gb, node))}
    versions, error = timed("software", spec.timeouts.software, software_versions) \
        if spec.runs("software") else ({}, None)
    results.update(driver=gpus.driver if gpus else None, versions=versions or {}, versions_error=error)
    return results


def collectives_phase(job: ResolvedJob, spec: PreflightSpec, info: RankInfo, node: str,
                      folder: Path) -> tuple[CollectivesOutcome, list[str]]:
    """Every rank: the process group, the all-reduce and clock tests. Returns the outcome and each rank's node."""
    if info.world_size < 2:
        return CollectivesOutcome(ranks=1), [node]
    import torch
    import torch.distributed as dist

    from jobs.rank.dist import init_distributed

    device = torch.device("cuda", info.local_rank) if job.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    wait_s = spec.timeouts.collectives + spec.timeouts.gpu + spec.timeouts.storage + spec.timeouts.infiniband
    try:
        # rank 0 opens the store on a free port and publishes it in the attempt's folder
        init_distributed(info, device, timeout_s=int(wait_s), rendezvous_file=folder / RENDEZVOUS_FILE)
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, node)
        if not spec.runs("collectives"):
            return CollectivesOutcome(ranks=info.world_size), gathered
        nbytes = int(spec.allreduce_mb * 1e6)
        outcome, _ = timed("collectives", spec.timeouts.collectives,
                           lambda: run_collectives(gathered, nbytes, device, spec.min_busbw_gbps))
        return outcome or CollectivesOutcome(ranks=info.world_size, error="collectives timed out"), gathered
    except Exception as exc:  # noqa: BLE001 - a group that does not form is a finding, not a crash
        return CollectivesOutcome(ranks=info.world_size, error=f"process group: {type(exc).__name__}: {exc}"), []
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def expected_nodes(env: dict[str, str], gathered: list[str], node: str) -> list[str]:
    """The allocation's nodes: from the process group, else the launcher's or Slurm's node list."""
    if gathered:
        return list(dict.fromkeys(gathered))
    if env.get("PODRUN_PREFLIGHT_NODES"):
        return env["PODRUN_PREFLIGHT_NODES"].split(",")
    listed = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    return expand_hostlist(listed) if listed else [node]


def wait_for_node_files(folder: Path, nodes: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Every node's file that appears within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {n: data for n in nodes if (data := read_json(node_file(folder, n))) is not None}
        if len(found) == len(nodes) or time.monotonic() > deadline:
            return found
        time.sleep(POLL_S)


def assemble(nodes: list[str], files: dict[str, dict[str, Any]], outcome: CollectivesOutcome,
             spec: PreflightSpec) -> Report:
    """The node x check report from the node files and the collectives outcome."""
    report = Report(nodes=nodes, busbw_gbps=outcome.busbw_gbps)
    versions = {n: f["versions"] for n, f in files.items() if f.get("versions")}
    drivers = outliers({n: f["driver"] for n, f in files.items() if f.get("driver")}, "driver")
    for node in nodes:
        data = files.get(node)
        if data is None:
            report.results[node] = {}  # every cell says the node sent no report
            continue
        cells = {name: CheckResult(**data[name]) for name in ("gpu", "infiniband", "storage")}
        if node in drivers and not cells["gpu"].failed:
            cells["gpu"] = failed(drivers[node])
        cells["collectives"] = evaluate_collectives(node, outcome, spec.min_busbw_gbps) \
            if spec.runs("collectives") else skipped("not in preflight.checks")
        cells["software"] = _software_cell(node, data, versions, outcome, spec)
        report.results[node] = cells
    return report


def _software_cell(node: str, data: dict[str, Any], versions: dict[str, dict[str, str]],
                   outcome: CollectivesOutcome, spec: PreflightSpec) -> CheckResult:
    if not spec.runs("software"):
        return skipped("not in preflight.checks")
    if data.get("versions_error"):
        return failed(f"reading versions: {data['versions_error']}")
    return evaluate_software(node, versions, outcome.clock_offsets, spec.max_clock_skew_s)


def finish(job: ResolvedJob, folder: Path, report: Report, started: float) -> int:
    """Write, print and return the outcome of rank 0."""
    report.duration_s, report.attempt = time.time() - started, folder.name
    report.write(folder)
    report.write(preflight_dir(job))
    for line in report.table().splitlines():
        say(line)
    for node, reasons in report.failures().items():
        say(f"{node}: FAIL {'; '.join(reasons)}")
    return exit_codes.SUCCESS if report.ok else exit_codes.PREFLIGHT_FAILED


def run(job: ResolvedJob, env: dict[str, str]) -> int:
    """Run this rank's part of the preflight; rank 0 returns the verdict."""
    started = float(env.get("PODRUN_PREFLIGHT_T0") or time.time())
    node = node_name(env)
    job = apply_node_paths(apply_array_task(job, env), node)
    spec = job.preflight
    if spec is None:
        say("off for this job")
        return exit_codes.SUCCESS
    info = detect_rank_env(env)
    folder = preflight_dir(job) / attempt_name(env)
    folder.mkdir(parents=True, exist_ok=True)
    if info.local_rank == 0:
        write_json(node_file(folder, node), local_checks(job, spec, node))
    outcome, gathered = collectives_phase(job, spec, info, node, folder)
    if not info.is_main:
        return exit_codes.SUCCESS
    nodes = expected_nodes(env, gathered, node)
    files = wait_for_node_files(folder, nodes, timeout_s=0 if gathered else spec.timeouts.storage)
    return finish(job, folder, assemble(nodes, files, outcome, spec), started)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jobs.preflight CONFIG  (a config.resolved.yaml written by podrun)", file=sys.stderr)
        return exit_codes.FAILED
    try:
        return run(load_resolved(Path(args[0])), dict(os.environ))
    except PodrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.FAILED
