"""The time-to-train model of ``podrun predict``: small functions, each stating its formula.

One optimizer step on ``N`` GPUs (``g`` per node, ``k = N / g`` nodes) with ``b`` items per
GPU takes::

    t_step = t_floor + b / X + exposed allreduce

``X`` is one GPU's rate (items/s) once the per-step floor ``t_floor`` is taken out: the time
a step costs however small its batch (kernel launches and tails, the optimizer, the
loader hand-off). It is calibrated on a measured run (:func:`calibrate_rate`). A run to
the target then takes::

    T = E * ceil(items_per_epoch / B) * t_step  +  n_evals * eval_items / (N * X_eval)  +  startup

with ``E`` epochs to converge at the global batch ``B = N b`` (MLPerf's reference
convergence points for ResNet-50, :mod:`orchestrator.studies.rcp`). Time units are seconds,
bandwidths bytes per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from orchestrator.errors import ConfigError

Algorithm = Literal["ring", "tree", "auto"]
NVLINK_HOP_S = 1e-6  # one hop over NVLink/NVSwitch (inter-node hops: the profile's latency_us)


@dataclass(frozen=True)
class Fabric:
    """What the allreduce model knows of a cluster (from the profile's ``interconnect:``)."""

    gpus_per_node: int
    nvlink_bps: float  # one GPU's NVLink/NVSwitch bandwidth, one way
    network_bps: float  # one node's HCAs together: hcas x link rate
    hop_s: float  # one hop between nodes
    tree_chunk_bytes: float = 0.0  # what the tree forwards from one level to the next (0: perfectly pipelined)


def bus_bandwidth(world: int, fabric: Fabric) -> float:
    """The allreduce's bottleneck bandwidth: ``B = nvlink`` on one node, else ``min(nvlink, hcas x link rate)``.

    NCCL runs one ring (or tree) per HCA, each carrying ``1/hcas`` of the data, so a node's
    HCAs together move what one GPU moves over NVLink.
    """
    if world <= fabric.gpus_per_node:
        return fabric.nvlink_bps
    return min(fabric.nvlink_bps, fabric.network_bps)


def allreduce_seconds(nbytes: float, world: int, fabric: Fabric, algorithm: Algorithm = "auto") -> float:
    """Allreduce of ``S = nbytes`` over ``N = world`` ranks (``k`` nodes of ``g`` GPUs).

    ring: ``2 (N-1)/N * S / B + 2 (N-1) a``; tree (NCCL's double binary tree): the same
    bandwidth term, ``2 ceil(log2 N) a`` of latency and, across nodes, the fill and drain of
    its pipeline, ``2 ceil(log2 k) c / B``: the reduce climbs ``ceil(log2 k)`` levels of
    nodes and the broadcast comes down them, each level waiting for one chunk of ``c =
    fabric.tree_chunk_bytes`` before it forwards it. ``a`` is one hop (NVLink on one node,
    the profile's ``latency_us`` between nodes); auto: the faster of the two.
    """
    if world <= 1:
        return 0.0
    hop = NVLINK_HOP_S if world <= fabric.gpus_per_node else fabric.hop_s
    bandwidth = bus_bandwidth(world, fabric)
    moved = 2 * (world - 1) / world * nbytes / bandwidth
    ring = moved + 2 * (world - 1) * hop
    tree = moved + 2 * math.ceil(math.log2(world)) * hop + tree_fill_seconds(world, fabric, bandwidth)
    return {"ring": ring, "tree": tree}.get(algorithm, min(ring, tree))


def tree_fill_seconds(world: int, fabric: Fabric, bandwidth: float) -> float:
    """``2 ceil(log2 k) c / B`` over ``k = ceil(N / g)`` nodes (0 on one node): the tree's pipeline filling and
    draining, ``c = fabric.tree_chunk_bytes``."""
    if world <= fabric.gpus_per_node or fabric.tree_chunk_bytes <= 0:
        return 0.0
    nodes = math.ceil(world / fabric.gpus_per_node)
    return 2 * math.ceil(math.log2(nodes)) * fabric.tree_chunk_bytes / bandwidth


def exposed_allreduce(allreduce_s: float, compute_s: float, nbytes: float, bucket_bytes: float,
                      backward_share: float = 2 / 3) -> float:
    """What the step waits for: ``max(t_ar - backward_share * t_compute, t_ar * min(1, bucket / S))``.

    Buckets are reduced while backward (about 2/3 of a step's compute) still runs; the
    last bucket always waits.
    """
    if allreduce_s <= 0:
        return 0.0
    last_bucket = allreduce_s * min(1.0, bucket_bytes / max(nbytes, 1.0))
    return max(allreduce_s - backward_share * compute_s, last_bucket)


def step_seconds(per_gpu_batch: float, rate: float, floor_s: float, allreduce_s: float, nbytes: float,
                 bucket_bytes: float) -> tuple[float, float]:
    """``t_step = t_floor + b / X + exposed allreduce``; returns (t_step, exposed allreduce)."""
    compute = per_gpu_batch / rate
    exposed = exposed_allreduce(allreduce_s, compute, nbytes, bucket_bytes)
    return floor_s + compute + exposed, exposed


def calibrate_rate(per_gpu_batch: float, measured_step_s: float, floor_s: float, allreduce_s: float,
                   nbytes: float, bucket_bytes: float) -> float:
    """``X = b / (t_step - t_floor - exposed)``, the inverse of :func:`step_seconds` (exposure depends on X).

    Raises:
        ConfigError: the measured step is not longer than the floor and the allreduce.
    """
    rate = per_gpu_batch / max(measured_step_s - floor_s, 1e-12)
    for _ in range(50):  # exposure shrinks as compute grows: a fixed point, reached in a few rounds
        exposed = exposed_allreduce(allreduce_s, per_gpu_batch / rate, nbytes, bucket_bytes)
        left = measured_step_s - floor_s - exposed
        if left <= 0:
            raise ConfigError(f"a measured step of {measured_step_s * 1000:.2f} ms leaves nothing for compute "
                              f"after the {floor_s * 1000:.2f} ms floor and {exposed * 1000:.2f} ms of allreduce: "
                              "lower step_floor_ms or check the interconnect fields")
        rate, before = per_gpu_batch / left, rate
        if rate == before:
            break
    return rate


def steps_per_epoch(items_per_epoch: int, global_batch: int) -> int:
    """``ceil(items_per_epoch / B)``: the last, short batch is a step too."""
    return math.ceil(items_per_epoch / global_batch)


def evals_for(epochs: float, every_epochs: int, start_epoch: int = 0) -> int:
    """``ceil((E - start) / every)``: evals run every ``every`` epochs after ``start``, and at the end."""
    return max(1, math.ceil((epochs - start_epoch) / every_epochs))


def eval_seconds(evals: int, eval_items: int, world: int, eval_rate: float) -> float:
    """``n_evals * eval_items / (N * X_eval)``: each eval splits the validation set over the ranks."""
    return evals * eval_items / (world * eval_rate)


def time_to_train(epochs: float, steps: int, step_s: float, evals_s: float, startup_s: float) -> float:
    """``T = E * steps_per_epoch * t_step + eval time + startup``."""
    return epochs * steps * step_s + evals_s + startup_s


def gpu_hours(world: int, seconds: float) -> float:
    """What a run costs: ``N * T / 3600``."""
    return world * seconds / 3600


# --------------------------------------------------------------------------- one scale


@dataclass(frozen=True)
class Workload:
    """What one recipe asks of a step and an epoch."""

    items_per_epoch: int
    eval_items: int
    grad_bytes: float  # the gradients in the comm dtype: parameters x bytes per value
    eval_every: int = 1
    eval_start: int = 0
    bucket_bytes: float = 25 * 1024**2  # DDP's default bucket


@dataclass(frozen=True)
class Calibration:
    """A GPU's rates and the fixed costs, from one measured run (see :func:`calibrate`)."""

    rate: float  # X: items/s per GPU once the floor is out
    eval_rate: float  # X_eval: eval items/s per GPU
    floor_s: float
    startup_s: float
    source: str


@dataclass(frozen=True)
class Prediction:
    nodes: int
    gpus: int
    global_batch: int
    per_gpu_batch: float
    lr: float
    epochs: float
    epochs_from: str
    rate: float  # items/s of the whole job while it trains
    allreduce_share: float  # exposed allreduce / step
    step_s: float
    evals: int
    time_s: float
    gpu_hours: float


def calibrate(per_gpu_batch: float, world: int, step_s: float, eval_s_per_eval: float | None, work: Workload,
              fabric: Fabric, floor_s: float, startup_s: float, source: str,
              algorithm: Algorithm = "auto") -> Calibration:
    """Rates from a measured step (and eval) at ``world`` ranks.

    ``X`` inverts :func:`step_seconds` at the measured scale; ``X_eval = eval_items /
    (t_eval * N)`` from a measured eval, else ``3 X`` (an eval is a forward pass, a third
    of a training step's work).
    """
    allreduce = allreduce_seconds(work.grad_bytes, world, fabric, algorithm)
    rate = calibrate_rate(per_gpu_batch, step_s, floor_s, allreduce, work.grad_bytes, work.bucket_bytes)
    eval_rate = work.eval_items / (eval_s_per_eval * world) if eval_s_per_eval else 3 * rate
    return Calibration(rate, eval_rate, floor_s, startup_s, source)


def predict_scale(nodes: int, gpus_per_node: int, global_batch: int, lr: float, epochs: tuple[float, str],
                  work: Workload, cal: Calibration, fabric: Fabric, algorithm: Algorithm = "auto") -> Prediction:
    """Time to train at ``nodes`` nodes: :func:`step_seconds`, :func:`evals_for` and :func:`time_to_train`."""
    world = nodes * gpus_per_node
    per_gpu = global_batch / world
    allreduce = allreduce_seconds(work.grad_bytes, world, fabric, algorithm)
    step, exposed = step_seconds(per_gpu, cal.rate, cal.floor_s, allreduce, work.grad_bytes, work.bucket_bytes)
    steps = steps_per_epoch(work.items_per_epoch, global_batch)
    evals = evals_for(epochs[0], work.eval_every, work.eval_start)
    total = time_to_train(epochs[0], steps, step, eval_seconds(evals, work.eval_items, world, cal.eval_rate),
                          cal.startup_s)
    return Prediction(nodes=nodes, gpus=world, global_batch=global_batch, per_gpu_batch=per_gpu, lr=lr,
                      epochs=epochs[0], epochs_from=epochs[1], rate=global_batch / step,
                      allreduce_share=exposed / step, step_s=step, evals=evals, time_s=total,
                      gpu_hours=gpu_hours(world, total))
