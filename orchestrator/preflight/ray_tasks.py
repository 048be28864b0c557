"""Preflight on Ray: one task per node of the cluster, pinned to it, before the trainer starts.

The Ray driver (:mod:`orchestrator.backends.ray_job`) calls :func:`run_ray_preflight` after
``ray.init()``. Each task runs :func:`jobs.preflight.node.run` as rank ``i`` of ``n``
(one rank per node) under the node's name; rank 0 runs on the driver's node and prints
the table into the job's log. Ray cannot exclude a node from a job, so on a failure the
driver reports which node failed which check and stops before training.
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


def _node_task(config: dict[str, Any], env: dict[str, str]) -> int:
    """One node's preflight, inside a Ray worker process of its own (``max_calls=1``)."""
    from jobs.contract.job import ResolvedJob
    from jobs.preflight.node import run

    os.environ.update(env)
    return run(ResolvedJob.model_validate(config), dict(os.environ))


def task_env(plan: LaunchPlan, nodes: list[dict[str, Any]], names: list[str], rank: int) -> dict[str, str]:
    """The environment of the task on node ``rank``."""
    return {"RANK": str(rank), "WORLD_SIZE": str(len(nodes)), "LOCAL_RANK": "0", "PODRUN_NODE_NAME": names[rank],
            "PODRUN_PREFLIGHT_NODES": ",".join(names), "PODRUN_PREFLIGHT_T0": str(time.time()),
            "PODRUN_PREFLIGHT_ATTEMPT": f"ray-{time.strftime('%Y%m%d-%H%M%S')}",
            "MASTER_ADDR": plan.profile.env.get("MASTER_ADDR") or str(nodes[0]["NodeManagerAddress"])}


def run_ray_preflight(plan: LaunchPlan) -> int:
    """Run the checks on every node of the Ray cluster; returns rank 0's verdict (0: all passed)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes(ray.nodes(), ray.get_runtime_context().get_node_id())
    names, spec = node_names(nodes), plan.job.preflight
    say(f"checking {len(nodes)} Ray node(s): {', '.join(names)}")
    task = ray.remote(max_calls=1, num_cpus=0, num_gpus=1 if plan.job.device == "cuda" else 0)(_node_task)
    config = plan.job.model_dump(mode="json")
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(config, task_env(plan, nodes, names, rank)) for rank, node in enumerate(nodes)]
    limit = spec.budget_s() if spec else STARTUP_MARGIN_S
    try:
        code = int(ray.get(refs, timeout=limit)[0])
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
        say(f"the preflight tasks did not finish: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return exit_codes.PREFLIGHT_FAILED
    if code != exit_codes.SUCCESS:
        report = read_report(preflight_dir(plan.job))
        failures = report.failures() if report else {}
        say(decide(failures, exclude_bad=False, can_exclude=False, job_nodes=plan.job.nodes, partition={},
                   excluded=Excluded(), max_requeues=0).message)
    return code
