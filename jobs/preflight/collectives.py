"""The collectives check: an all-reduce bus-bandwidth test over every rank, and pairwise tests to
name a slow node; plus the clock offsets the software check judges.

Bandwidths follow nccl-tests (``doc/PERFORMANCE.md``): ``algbw = bytes / time`` and, for
all-reduce over ``n`` ranks, ``busbw = algbw * 2 (n - 1) / n``, in GB/s (1e9 bytes).
torch.distributed runs it: NCCL on GPUs, gloo on CPU. When the bus bandwidth is below
``preflight.min_busbw_gbps`` and there are three nodes or more, each node is tested with
its two ring neighbours; a node whose both pairs are slow, while other pairs are not, is
named (:func:`blame_slow_nodes`). With two nodes no pair test can single one out.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from jobs.preflight.result import CheckResult, failed, passed, skipped

WARMUP_ITERS, TIMED_ITERS, CLOCK_ROUNDS = 2, 5, 3


def alg_bandwidth_gbps(nbytes: float, seconds: float) -> float:
    """nccl-tests' algbw: bytes moved per second by the operation, in GB/s."""
    return nbytes / seconds / 1e9


def bus_bandwidth_gbps(algbw: float, ranks: int) -> float:
    """nccl-tests' all-reduce busbw: ``algbw * 2 (n - 1) / n`` (comparable across rank counts)."""
    return algbw * 2 * (ranks - 1) / ranks


def ring_pairs(count: int) -> list[tuple[int, int]]:
    """Each node with its ring neighbour: ``(0, 1), (1, 2), ..., (n-1, 0)``; none below three nodes."""
    return [(i, (i + 1) % count) for i in range(count)] if count >= 3 else []


def pair_rounds(pairs: list[tuple[int, int]]) -> list[list[int]]:
    """The pairs (by index) in rounds in which no node is in two pairs, so a round runs at once."""
    rounds: list[list[int]] = []
    busy: list[set[int]] = []
    for index, (a, b) in enumerate(pairs):
        for members, taken in zip(rounds, busy):
            if a not in taken and b not in taken:
                members.append(index)
                taken.update((a, b))
                break
        else:
            rounds.append([index])
            busy.append({a, b})
    return rounds


def blame_slow_nodes(pair_busbw: dict[tuple[str, str], float], min_busbw: float) -> list[str]:
    """Nodes all of whose pairs are slow while some pair is not; empty when nobody can be singled out."""
    slow = {pair for pair, value in pair_busbw.items() if value < min_busbw}
    if not slow or len(slow) == len(pair_busbw):
        return []
    nodes = sorted({node for pair in pair_busbw for node in pair})
    return [node for node in nodes if all(pair in slow for pair in pair_busbw if node in pair)]


@dataclass
class CollectivesOutcome:
    """What the collectives phase measured (``error`` set when it could not run)."""

    ranks: int
    busbw_gbps: float | None = None
    pair_busbw: dict[tuple[str, str], float] = field(default_factory=dict)
    clock_offsets: dict[str, float] | None = None
    error: str | None = None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_allreduce(nbytes: int, device: Any, group: Any = None) -> float:
    """Seconds per all-reduce of ``nbytes`` per rank, the slowest rank's (every member must call it)."""
    import torch
    import torch.distributed as dist

    tensor = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=device)
    for _ in range(WARMUP_ITERS):
        dist.all_reduce(tensor, group=group)
    _sync(device)
    start = time.perf_counter()
    for _ in range(TIMED_ITERS):
        dist.all_reduce(tensor, group=group)
    _sync(device)
    elapsed = torch.tensor([(time.perf_counter() - start) / TIMED_ITERS], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
    return float(elapsed.item())


def clock_offsets(rank_nodes: list[str]) -> dict[str, float]:
    """Each node's clock minus rank 0's, the median of a few rounds right after a barrier."""
    import torch.distributed as dist

    samples = []
    for _ in range(CLOCK_ROUNDS):
        dist.barrier()
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, time.time())
        samples.append([stamp - gathered[0] for stamp in gathered])
    by_node: dict[str, list[float]] = {}
    for rank, node in enumerate(rank_nodes):
        by_node.setdefault(node, []).extend(sample[rank] for sample in samples)
    return {node: statistics.median(values) for node, values in by_node.items()}


def pairwise_busbw(rank_nodes: list[str], nbytes: int, device: Any) -> dict[tuple[str, str], float]:
    """Bus bandwidth of each ring pair of nodes (all ranks of both nodes), gathered on every rank."""
    import torch.distributed as dist

    nodes = list(dict.fromkeys(rank_nodes))
    pairs = ring_pairs(len(nodes))
    members = [[r for r, n in enumerate(rank_nodes) if n in (nodes[a], nodes[b])] for a, b in pairs]
    groups = [dist.new_group(ranks) for ranks in members]  # every rank creates every group, in order
    me, found = dist.get_rank(), {}
    for round_ in pair_rounds(pairs):
        for index in round_:
            if me in members[index]:
                seconds = measure_allreduce(nbytes, device, groups[index])
                a, b = pairs[index]
                ranks = len(members[index])
                found[(nodes[a], nodes[b])] = bus_bandwidth_gbps(alg_bandwidth_gbps(nbytes, seconds), ranks)
        dist.barrier()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, found)
    return {pair: value for part in gathered for pair, value in part.items()}


def run_collectives(rank_nodes: list[str], nbytes: int, device: Any, min_busbw: float | None) -> CollectivesOutcome:
    """All-reduce, clock offsets and (when slow) pairwise tests, on the current process group."""
    ranks = len(rank_nodes)
    outcome = CollectivesOutcome(ranks=ranks, clock_offsets=clock_offsets(rank_nodes))
    seconds = measure_allreduce(nbytes, device)
    outcome.busbw_gbps = bus_bandwidth_gbps(alg_bandwidth_gbps(nbytes, seconds), ranks)
    if min_busbw is not None and outcome.busbw_gbps < min_busbw:
        outcome.pair_busbw = pairwise_busbw(rank_nodes, nbytes, device)
    return outcome


def evaluate_collectives(node: str, outcome: CollectivesOutcome, min_busbw: float | None) -> CheckResult:
    """One node's cell of the collectives check."""
    if outcome.ranks < 2:
        return skipped("one rank, nothing to reduce")
    if outcome.error:
        return failed(outcome.error)
    measured = f"busbw {outcome.busbw_gbps:.3g} GB/s over {outcome.ranks} ranks"
    if min_busbw is None:
        return skipped(f"no preflight.min_busbw_gbps in the profile ({measured})")
    if outcome.busbw_gbps >= min_busbw:
        return passed(measured)
    slow = blame_slow_nodes(outcome.pair_busbw, min_busbw)
    if node in slow:
        mine = ", ".join(f"{a}-{b} {v:.3g}" for (a, b), v in sorted(outcome.pair_busbw.items()) if node in (a, b))
        return failed(f"slow node: pairwise busbw {mine} GB/s < {min_busbw:g}")
    if slow:
        return passed(f"{measured}, below {min_busbw:g} because of {', '.join(slow)}")
    why = "fewer than three nodes: no pair test can single one out" if not outcome.pair_busbw else "every pair is slow"
    return failed(f"{measured} < {min_busbw:g} ({why})")
