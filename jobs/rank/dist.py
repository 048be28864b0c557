"""Rank detection and the communication set-up, for every backend and both comm paths.

A rank learns who it is from the environment: the standard contract (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) set by the local
backend, torchrun or Ray Train, or Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``.

``comm: ddp`` (the default) uses torch.distributed: NCCL on GPUs, gloo on CPU.
``comm: horovod`` uses Horovod (started by horovodrun, by srun with the gloo rendezvous
the Slurm script starts, or by Horovod's RayExecutor). The few collectives the loop needs
(:func:`all_reduce_sum`, :func:`start_all_reduce_sum`, :func:`all_gather_object`,
:func:`barrier`) work on either, and each call is counted in :data:`COLLECTIVES` (the
gradient all-reduce of DDP or Horovod is not: it is the training step's own work).
"""

from __future__ import annotations

import datetime
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from jobs.contract.errors import PodrunError
from jobs.contract.placement import RankInfo, free_port
from jobs.rank.rendezvous import interface_env, master_address, own_address, published_store

DEFAULT_TIMEOUT_S = 600
_horovod = None  # the horovod.torch module once comm: horovod is initialised
COLLECTIVES: Counter[str] = Counter()  # calls of this module's collectives that reach a group (see below), by name
# Test-only: sums (the stop vote, the progress counts) take the collective path with one rank
# too, in a one-rank group. NCCL will not put two ranks on one GPU, so this is how a test on
# one GPU runs the vote's device path (tests/test_step_modes.py).
ONE_RANK_COLLECTIVES = False


def init_distributed(info: RankInfo, device: torch.device, timeout_s: int = DEFAULT_TIMEOUT_S,
                     rendezvous_file: Path | None = None) -> str:
    """Initialise the process group: NCCL on GPUs, gloo on CPU. Returns the backend used.

    A group that already exists (Ray Train sets one up) is kept. With ``rendezvous_file``
    (a Slurm step, see :func:`jobs.rank.rendezvous.step_file`) and no ``MASTER_PORT``, rank 0
    opens the store on a free port and publishes it there; otherwise ``MASTER_ADDR``/
    ``MASTER_PORT`` are read from the environment. Each rank picks the network interface
    toward the rendezvous address unless the profile names one.
    """
    if dist.is_initialized():
        return dist.get_backend()
    backend = "nccl" if device.type == "cuda" else "gloo"
    env = dict(os.environ)
    kwargs: dict[str, Any] = dict(backend=backend, rank=info.rank, world_size=info.world_size,
                                  timeout=datetime.timedelta(seconds=timeout_s))
    if info.world_size == 1 and "MASTER_ADDR" not in env:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        address = "127.0.0.1"
    elif rendezvous_file is not None and "MASTER_PORT" not in env:
        kwargs["store"], address = published_store(rendezvous_file, info, own_address(env), timeout_s)
    else:
        address = master_address(env) or "127.0.0.1"
        os.environ.setdefault("MASTER_ADDR", address)
    os.environ.update(interface_env(dict(os.environ), address))
    dist.init_process_group(**kwargs)
    return backend


def horovod():
    """The initialised ``horovod.torch`` module, or None on the DDP path."""
    return _horovod


def horovod_env_from_slurm(env: dict[str, str]) -> dict[str, str]:
    """Horovod's gloo contract for a rank started by srun (the Slurm script runs the rendezvous)."""
    if "SLURM_PROCID" not in env or "HOROVOD_GLOO_RENDEZVOUS_PORT" not in env or "HOROVOD_RANK" in env:
        return {}
    address = master_address(env) or "127.0.0.1"
    found = {
        "HOROVOD_RANK": env["SLURM_PROCID"], "HOROVOD_SIZE": env["SLURM_NTASKS"],
        "HOROVOD_LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "HOROVOD_LOCAL_SIZE": env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        "HOROVOD_CROSS_RANK": env.get("SLURM_NODEID", "0"), "HOROVOD_CROSS_SIZE": env.get("SLURM_NNODES", "1"),
        "HOROVOD_HOSTNAME": env.get("SLURMD_NODENAME", socket.gethostname()),
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": address,
        "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo",
    }
    # Horovod's gloo names one interface (HOROVOD_GLOO_IFACE); the one toward the rendezvous host
    return found | interface_env(env, address)


def init_horovod(settings_env: dict[str, str]) -> RankInfo:
    """``hvd.init()`` after applying the job's Horovod settings; returns this rank's place.

    Raises:
        PodrunError: Horovod is not installed (``make horovod`` builds it).
    """
    global _horovod
    try:
        import horovod.torch as hvd
    except ImportError as exc:
        raise PodrunError(f"comm: horovod needs Horovod ({exc}): build it with 'make horovod'") from None
    os.environ.update(settings_env)
    os.environ.update(horovod_env_from_slurm(dict(os.environ)))
    hvd.init()
    _horovod = hvd
    return RankInfo(hvd.rank(), hvd.size(), hvd.local_rank())


def _world_size() -> int:
    if _horovod is not None:
        return _horovod.size()
    return dist.get_world_size() if dist.is_initialized() else 1


def sums_need_a_collective(world_size: int) -> bool:
    """Whether a sum over ``world_size`` ranks goes through a collective (see :data:`ONE_RANK_COLLECTIVES`)."""
    return world_size > 1 or ONE_RANK_COLLECTIVES


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (a host sync on a GPU: call it where the loop logs)."""
    return start_all_reduce_sum(values, device).result()


class PendingSum:
    """The sum of :func:`start_all_reduce_sum`, read with :meth:`result`.

    On a GPU the reduced tensor is copied into pinned host memory behind a CUDA event, so
    :meth:`result` waits for that copy only, not for the work queued after it.
    """

    def __init__(self, reduced: torch.Tensor) -> None:
        self._event = None
        if reduced.device.type == "cuda":
            host = torch.empty(reduced.shape, dtype=reduced.dtype, pin_memory=True)
            host.copy_(reduced, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            reduced = host
        self._reduced = reduced

    def result(self) -> list[float]:
        if self._event is not None:
            self._event.synchronize()
        return self._reduced.tolist()


def start_all_reduce_sum(values: list[float], device: torch.device) -> PendingSum:
    """Start summing a few numbers over all ranks; read the sum later with ``.result()``.

    Under torch.distributed the sum is computed on ``device`` (NCCL needs a GPU tensor): the
    numbers go there from pinned host memory without the host waiting, and come back the same
    way (:class:`PendingSum`), so nothing drains the GPU's queue. Horovod sums a host tensor,
    off the GPU.
    """
    if not sums_need_a_collective(_world_size()):
        return PendingSum(torch.tensor(values, dtype=torch.float64))
    COLLECTIVES["all_reduce"] += 1
    if _horovod is not None:
        return PendingSum(_horovod.allreduce(torch.tensor(values, dtype=torch.float64), op=_horovod.Sum))
    tensor = device_values(values, device)
    dist.all_reduce(tensor)
    return PendingSum(tensor)


def device_values(values: list[float], device: torch.device) -> torch.Tensor:
    """``values`` as a float64 tensor on ``device``.

    On a GPU a new device buffer is filled from pinned memory with ``non_blocking=True``:
    ``torch.tensor(values, device=cuda)`` would copy from pageable memory and synchronize the
    stream. The caching host allocator keeps the pinned block until the copy has run.
    """
    if device.type != "cuda":
        return torch.tensor(values, dtype=torch.float64)
    return torch.tensor(values, dtype=torch.float64, pin_memory=True).to(device, non_blocking=True)


def all_gather_object(obj: object) -> list:
    """Every rank's ``obj``, in rank order."""
    if _world_size() == 1:
        return [obj]
    COLLECTIVES["all_gather_object"] += 1
    if _horovod is not None:
        return _horovod.allgather_object(obj)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_object(obj: object) -> list | None:
    """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks).

    What only rank 0 needs (the RNG states it writes into a checkpoint) goes to rank 0 alone:
    gathered to every rank, it would cost each of 1,536 ranks all the others' states.
    Horovod has no gather: there it is an all-gather.
    """
    if _world_size() == 1:
        return [obj]
    COLLECTIVES["gather_object"] += 1
    if _horovod is not None:
        gathered = _horovod.allgather_object(obj)
        return gathered if _horovod.rank() == 0 else None
    gathered: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def barrier() -> None:
    if _world_size() == 1:
        return
    COLLECTIVES["barrier"] += 1
    if _horovod is not None:
        _horovod.barrier()
    else:
        dist.barrier()


def gather_hosts() -> list[str]:
    """The host name of every rank, in rank order."""
    return all_gather_object(socket.gethostname())
