"""Preflight on Ray: one worker per node of the cluster, pinned to it, before the trainer starts.

The Ray driver (:mod:`orchestrator.backends.ray_job`) calls :func:`run_ray_preflight` after
``ray.init()``. It runs in two steps:

1. **Start-up.** One actor per node, each pinned to its node, imports torch and answers. Ray
   starts worker processes one node at a time and sets up the job's runtime environment on each
   first; on a busy node that can take minutes. A node whose actor is not up within
   :data:`jobs.contract.preflight_spec.STARTUP_MARGIN_S` fails its ``start`` check, named.
2. **Checks.** Only once every actor is up, all of them run :func:`jobs.preflight.node.run` at
   once as rank ``i`` of ``n`` (one rank per node) under the node's name, so each check's timeout
   measures the check and not another node's start-up. Rank 0 runs on the driver's node and
   prints the table into the job's log.

Ray cannot exclude a node from a job, so on a failure the driver reports which node failed which
check and stops before training.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from jobs.contract import exit_codes
from jobs.contract.preflight_spec import STARTUP_MARGIN_S
from jobs.preflight.node import preflight_dir
from jobs.preflight.result import read_report
from orchestrator.preflight.policy import Excluded, decide
from orchestrator.spec.jobspec import LaunchPlan


def say(message: str) -> None:
    print(f"[preflight] {message}", flush=True)


def alive_nodes(nodes: list[dict[str, Any]], driver_node_id: str) -> list[dict[str, Any]]:
    """Nodes that can run a task, the driver's first (``ray.nodes()`` entries)."""
    usable = [n for n in nodes if n.get("Alive") and (n.get("Resources") or {}).get("CPU", 0) > 0]
    return sorted(usable, key=lambda n: (n["NodeID"] != driver_node_id, n["NodeID"]))


def node_names(nodes: list[dict[str, Any]]) -> list[str]:
    """Each node's host name, with a short node id where hosts share a name (several raylets on one host)."""
    hosts = [str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress")).split(".")[0] for n in nodes]
    shared = {host for host, count in Counter(hosts).items() if count > 1}
    return [f"{host}-{n['NodeID'][:6]}" if host in shared else host for host, n in zip(hosts, nodes)]


class NodeChecker:
    """One node's preflight, in a Ray worker process of its own (an actor pinned to the node)."""

    def ready(self) -> float:
        """Load what the checks need (torch is the slow part); the time it took."""
        started = time.monotonic()
        import torch  # noqa: F401

        from jobs.preflight.node import run  # noqa: F401
        return time.monotonic() - started

    def run(self, config: dict[str, Any], env: dict[str, str]) -> int:
        from jobs.contract.job import ResolvedJob
        from jobs.preflight.node import run

        os.environ.update(env)
        return run(ResolvedJob.model_validate(config), dict(os.environ))


def task_env(plan: LaunchPlan, nodes: list[dict[str, Any]], names: list[str], rank: int, t0: float,
             attempt: str) -> dict[str, str]:
    """The environment of the checks on node ``rank``."""
    return {"RANK": str(rank), "WORLD_SIZE": str(len(nodes)), "LOCAL_RANK": "0", "PODRUN_NODE_NAME": names[rank],
            "PODRUN_PREFLIGHT_NODES": ",".join(names), "PODRUN_PREFLIGHT_T0": str(t0),
            "PODRUN_PREFLIGHT_ATTEMPT": attempt,
            "MASTER_ADDR": plan.profile.env.get("MASTER_ADDR") or str(nodes[0]["NodeManagerAddress"])}


def not_started(names: list[str], ready: list[Any], pending: list[Any], errors: dict[Any, str],
                limit: float) -> dict[str, list[str]]:
    """The nodes whose checker did not come up: ``{node: [reason]}`` (``ready`` is in node order)."""
    failures = {}
    for name, ref in zip(names, ready):
        if ref in pending:
            failures[name] = [f"start: Ray started no worker on it in {limit:g} s (see its raylet.out)"]
        elif ref in errors:
            failures[name] = [f"start: {errors[ref]}"]
    return failures


def start_checkers(ray: Any, nodes: list[dict[str, Any]], names: list[str], gpus: int,
                   limit: float) -> tuple[list[Any], dict[str, list[str]]]:
    """One started checker per node, and the nodes that did not start one in ``limit`` seconds."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(num_cpus=0, num_gpus=gpus, max_restarts=0)(NodeChecker)
    checkers = [actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
                for node in nodes]
    ready = [checker.ready.remote() for checker in checkers]
    done, pending = ray.wait(ready, num_returns=len(ready), timeout=limit)
    errors = {}
    for ref in done:
        try:
            ray.get(ref)
        except ray.exceptions.RayError as exc:
            errors[ref] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return checkers, not_started(names, ready, pending, errors, limit)


def run_ray_preflight(plan: LaunchPlan) -> int:
    """Run the checks on every node of the Ray cluster; returns rank 0's verdict (0: all passed)."""
    import ray

    t0, attempt = time.time(), f"ray-{time.strftime('%Y%m%d-%H%M%S')}"
    nodes = alive_nodes(ray.nodes(), ray.get_runtime_context().get_node_id())
    names, spec = node_names(nodes), plan.job.preflight
    say(f"checking {len(nodes)} Ray node(s): {', '.join(names)}")
    checkers, failures = start_checkers(ray, nodes, names, 1 if plan.job.device == "cuda" else 0, STARTUP_MARGIN_S)
    try:
        if failures:
            for node, reasons in failures.items():
                say(f"{node}: FAIL {'; '.join(reasons)}")
            return stop(plan, failures)
        say(f"a worker is up on every node after {time.time() - t0:.1f} s; running the checks")
        config = plan.job.model_dump(mode="json")
        refs = [checker.run.remote(config, task_env(plan, nodes, names, rank, t0, attempt))
                for rank, checker in enumerate(checkers)]
        try:
            code = int(ray.get(refs, timeout=spec.budget_s() if spec else STARTUP_MARGIN_S)[0])
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
            say(f"the preflight checks did not finish: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            return exit_codes.PREFLIGHT_FAILED
        if code != exit_codes.SUCCESS:
            report = read_report(preflight_dir(plan.job))
            return stop(plan, report.failures() if report else {})
        return code
    finally:
        for checker in checkers:
            ray.kill(checker)


def stop(plan: LaunchPlan, failures: dict[str, list[str]]) -> int:
    """Say why the job stops before training (Ray cannot exclude a node); the preflight's exit code."""
    say(decide(failures, exclude_bad=False, can_exclude=False, job_nodes=plan.job.nodes, partition={},
               excluded=Excluded(), max_requeues=0).message)
    return exit_codes.PREFLIGHT_FAILED
