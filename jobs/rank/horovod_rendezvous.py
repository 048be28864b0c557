"""Horovod's gloo rendezvous for ranks that srun starts (what horovodrun does for its own ranks).

The Slurm script runs it on the batch host before srun::

    python -m jobs.rank.horovod_rendezvous --hosts node1:8,node2:8 --port-file JOB_DIR/hvd.port &

It serves the host allocation plan (rank, local and cross ranks per host, in Slurm's block
order) until it is killed; each rank maps its ``SLURM_*`` variables to ``HOROVOD_*``
(see :func:`jobs.rank.dist.horovod_env_from_slurm`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.rank.horovod_rendezvous")
    parser.add_argument("--hosts", required=True, help="host:slots,host:slots (Slurm's node order)")
    parser.add_argument("--port-file", required=True, type=Path)
    args = parser.parse_args(argv)

    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.http.http_server import RendezvousServer

    hosts = parse_hosts(args.hosts)
    plan = get_host_assignments(hosts, sum(host.slots for host in hosts))
    server = RendezvousServer()
    port = server.start()
    server.init(plan)
    tmp = args.port_file.with_name(args.port_file.name + ".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, args.port_file)  # the script waits for the file: it must appear whole
    print(f"[podrun] Horovod rendezvous for {len(plan)} ranks on port {port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
