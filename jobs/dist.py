"""Rank detection and torch.distributed set-up, for every backend.

A rank learns who it is from the environment: the standard contract (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) set by the local
backend, torchrun or Ray Train, or Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_rank_env(env: dict[str, str] | None = None) -> RankInfo:
    """Read this process's rank from the environment (standard contract, then Slurm, else 1 rank)."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        return RankInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return RankInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return RankInfo(0, 1, 0)


def slurm_rendezvous(env: dict[str, str]) -> dict[str, str]:
    """MASTER_ADDR/MASTER_PORT for a Slurm job step, unless already set.

    The address is the first host of ``SLURM_JOB_NODELIST`` (Slurm's hostlist syntax);
    the port is derived from the job id, so every rank computes the same one.
    """
    from orchestrator.hostlist import expand_hostlist

    found = {}
    if "MASTER_ADDR" not in env and env.get("SLURM_JOB_NODELIST"):
        found["MASTER_ADDR"] = expand_hostlist(env["SLURM_JOB_NODELIST"])[0]
    if "MASTER_PORT" not in env and env.get("SLURM_JOB_ID", "").isdigit():
        found["MASTER_PORT"] = str(20000 + int(env["SLURM_JOB_ID"]) % 20000)
    return found


def init_distributed(info: RankInfo, device: torch.device, timeout_s: int = DEFAULT_TIMEOUT_S) -> str:
    """Initialise the process group: NCCL on GPUs, gloo on CPU. Returns the backend used.

    A group that already exists (Ray Train sets one up) is kept.
    """
    if dist.is_initialized():
        return dist.get_backend()
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.update(slurm_rendezvous(dict(os.environ)))
    if info.world_size == 1 and "MASTER_ADDR" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group(
        backend=backend,
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return backend


def free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps ranks stopping together)."""
    return all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


def gather_hosts() -> list[str]:
    """The host name of every rank, in rank order."""
    host = socket.gethostname()
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [host]
    hosts: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hosts, host)
    return hosts
