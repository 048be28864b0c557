"""Where the ranks of a multi-node job meet: an address, a port nobody else holds, and the interface to use.

* **The port.** Rank 0 opens the rendezvous store on a port the kernel picks (``TCPStore``
  on port 0, so no other job's port can collide with it) and publishes its address and
  port in the job folder, which every node sees (shared storage); the others read it and
  connect. One file per job step: ``rendezvous/<job>.<restart>.<step>.json`` on Slurm, so a
  requeued job or a restarted step never reads an old one. A ``MASTER_PORT`` the profile
  sets is used as it is.
* **The interface.** gloo, NCCL's bootstrap and Horovod's gloo each pick a network
  interface; left alone they may pick ``lo`` or a management network. Unless the profile
  names one (``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``, ``HOROVOD_GLOO_IFACE``), each
  rank takes the interface its own route to the rendezvous address goes through
  (:func:`interface_toward`; a UDP ``connect`` sends nothing).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from jobs.contract.placement import RankInfo, expand_hostlist, node_name

POLL_S = 0.2
IFACE_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "HOROVOD_GLOO_IFACE")


def master_address(env: dict[str, str]) -> str | None:
    """``MASTER_ADDR``, else the first host of Slurm's node list (where rank 0 runs), else None."""
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    if env.get("SLURM_JOB_NODELIST"):
        return expand_hostlist(env["SLURM_JOB_NODELIST"])[0]
    return None


def interface_toward(address: str) -> str | None:
    """The name of the interface this host reaches ``address`` through (None when it cannot tell).

    A UDP socket's ``connect`` picks the route and the local address without sending a packet.
    A host name that resolves to a loopback address (Debian's ``127.0.1.1 <hostname>`` line, or a
    resolver that answers so for a moment) cannot be where the ranks of several nodes meet: then
    the first network card that is up is taken, and a line says so.
    """
    import psutil

    try:
        target = socket.gethostbyname(address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            local = probe.getsockname()[0]
    except OSError:
        return None
    cards = psutil.net_if_addrs()
    if _loopback(target) and not _loopback(address) and address != "localhost":
        up = psutil.net_if_stats()
        found = sorted(name for name, entries in cards.items() if up.get(name) and up[name].isup and any(
            entry.family == socket.AF_INET and not _loopback(entry.address) for entry in entries))
        if found:
            print(f"[rendezvous] {address} resolves to {target} on {socket.gethostname()}, which no other node "
                  f"can reach: using {found[0]} (set GLOO_SOCKET_IFNAME in the profile's env, or fix /etc/hosts)",
                  file=sys.stderr, flush=True)
            return found[0]
    for name, addresses in cards.items():
        if any(entry.family == socket.AF_INET and entry.address == local for entry in addresses):
            return name
    return None


def _loopback(address: str) -> bool:
    return address.startswith("127.")


def interface_env(env: dict[str, str], address: str | None) -> dict[str, str]:
    """The interface variables to set: each one the environment leaves unset, to the interface toward ``address``."""
    missing = [name for name in IFACE_VARIABLES if not env.get(name)]
    if not missing or not address:
        return {}
    return dict.fromkeys(missing, chosen) if (chosen := _named_interface(env) or interface_toward(address)) else {}


def _named_interface(env: dict[str, str]) -> str | None:
    """The one interface the profile already names for gloo or NCCL (NCCL's ``=eth0`` exact form
    included; an exclusion list, ``^docker0,lo``, names none)."""
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "HOROVOD_GLOO_IFACE"):
        value = env.get(name, "")
        if value and not value.startswith("^"):
            return value.removeprefix("=").split(",")[0]
    return None


def step_file(job_dir: Path, env: dict[str, str]) -> Path | None:
    """Where this job step's rendezvous is published, a name every rank of it computes alike (None outside Slurm)."""
    if not env.get("SLURM_JOB_ID") or "SLURM_STEP_ID" not in env:
        return None
    key = f"{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT', '0')}.{env['SLURM_STEP_ID']}"
    return job_dir / "rendezvous" / f"{key}.json"


def own_address(env: dict[str, str]) -> str:
    """The name rank 0 publishes: ``MASTER_ADDR`` if the profile sets one, else its node's name."""
    return env.get("MASTER_ADDR") or node_name(env)


def publish(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or nothing (a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def wait_published(path: Path, timeout_s: float) -> dict[str, Any]:
    """What rank 0 published at ``path``.

    Raises:
        TimeoutError: nothing within ``timeout_s`` (rank 0 did not start, or the folder is not shared).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank 0 published no rendezvous at {path} in {timeout_s:g} s "
                                   "(is the job folder on storage every node sees?)") from None
            time.sleep(POLL_S)


def published_store(path: Path, info: RankInfo, address: str, timeout_s: float) -> tuple[Any, str]:
    """The rendezvous store and its address: rank 0 opens it on a free port at ``address`` (its own
    name) and publishes both at ``path``; the others read them and join.

    Raises:
        TimeoutError: rank 0 published nothing in ``timeout_s``.
    """
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if info.is_main:
        store = dist.TCPStore(address, 0, info.world_size, True, timeout=timeout, wait_for_workers=False)
        publish(path, {"address": address, "port": store.port})
        return store, address
    found = wait_published(path, timeout_s)
    return dist.TCPStore(found["address"], int(found["port"]), info.world_size, False, timeout=timeout), \
        found["address"]
