"""Who and where this rank is, without importing torch: its rank, its peers, a free port.

A rank learns who it is from the environment: the standard contract (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) that the local backend, torchrun and Ray Train set,
Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, or horovodrun's ``HOROVOD_*``.

Host lists (``dgx[001-004,010]``) are expanded by ``python-hostlist``, LLNL's maintained
implementation of Slurm's syntax: ranks expand them inside containers that have no
``scontrol``, so they cannot shell out to ``scontrol show hostnames``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import hostlist


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_rank_env(env: dict[str, str] | None = None) -> RankInfo:
    """This process's rank from the environment (standard contract, Slurm, horovodrun, else 1 rank)."""
    env = dict(os.environ if env is None else env)
    for rank, size, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
                              ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK")):
        if rank in env and size in env:
            return RankInfo(int(env[rank]), int(env[size]), int(env.get(local, 0)))
    return RankInfo(0, 1, 0)


def node_name(env: dict[str, str] | None = None) -> str:
    """This node's name: ``PODRUN_NODE_NAME`` (set by a launcher), Slurm's ``SLURMD_NODENAME``, else the host's."""
    env = os.environ if env is None else env
    return env.get("PODRUN_NODE_NAME") or env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm hostlist (``node[1-3,7],gpu[01-02]x``) into host names, in order.

    Raises:
        ValueError: the expression is malformed.
    """
    try:
        return hostlist.expand_hostlist(text.strip())
    except hostlist.BadHostlist as exc:
        raise ValueError(f"bad hostlist {text!r}: {exc}") from None


def free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
