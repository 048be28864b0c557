"""Where the ranks of a multi-node job meet: the published port, and the network interface each rank picks."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from jobs.contract.placement import RankInfo
from jobs.rank.rendezvous import interface_env, interface_toward, master_address, published_store, step_file


@pytest.mark.fast
def test_the_route_to_an_address_names_the_interface():
    assert interface_toward("127.0.0.1") == "lo"
    assert interface_toward("no-such-host.invalid") is None


@pytest.mark.fast
def test_a_host_name_that_resolves_to_loopback_takes_a_network_card_and_says_so(monkeypatch, capsys):
    """Debian's ``127.0.1.1 <hostname>`` line (or a resolver's bad moment): gloo would bind ``lo`` and
    advertise 127.0.0.1 to the other nodes. The card that is up is taken instead."""
    import socket

    import psutil

    cards = [name for name, up in psutil.net_if_stats().items() if up.isup and name != "lo"]
    if not cards:
        pytest.skip("this machine has no network card that is up")
    real = socket.gethostbyname
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "127.0.1.1" if name == "node1" else real(name))
    assert interface_toward("node1") in cards
    assert "node1 resolves to 127.0.1.1" in capsys.readouterr().err
    assert interface_toward("127.0.0.1") == "lo" and interface_toward("localhost") == "lo"  # a one-node job's


@pytest.mark.parametrize("env, chosen", [
    ({}, "lo"),  # nothing named: the interface toward the rendezvous address, for gloo, NCCL and Horovod
    ({"NCCL_SOCKET_IFNAME": "ib0"}, "ib0"),  # the profile's choice is kept and reused for the others
    ({"NCCL_SOCKET_IFNAME": "=eth1"}, "eth1"),  # NCCL's exact-match form
    ({"NCCL_SOCKET_IFNAME": "^docker0,lo"}, "lo"),  # an exclusion list names no interface: the route does
    ({"GLOO_SOCKET_IFNAME": "eth2,eth3"}, "eth2"),
])
@pytest.mark.fast
def test_each_unset_interface_variable_gets_one_interface(env, chosen):
    found = interface_env(env, "127.0.0.1")
    assert set(found) == {"GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "HOROVOD_GLOO_IFACE"} - set(env)
    assert set(found.values()) <= {chosen}


@pytest.mark.fast
def test_no_variable_is_overwritten_and_no_address_sets_nothing():
    named = {"GLOO_SOCKET_IFNAME": "a", "NCCL_SOCKET_IFNAME": "b", "HOROVOD_GLOO_IFACE": "c"}
    assert interface_env(named, "127.0.0.1") == {}
    assert interface_env({}, None) == {}


@pytest.mark.fast
def test_rank_0_is_found_by_master_addr_or_the_first_host_of_the_node_list():
    assert master_address({"MASTER_ADDR": "head", "SLURM_JOB_NODELIST": "gpu[3-4]"}) == "head"
    assert master_address({"SLURM_JOB_NODELIST": "gpu[3-4],cpu1"}) == "gpu3"
    assert master_address({}) is None


@pytest.mark.fast
def test_every_step_of_every_attempt_has_its_own_rendezvous_file(tmp_path):
    env = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "1"}
    assert step_file(tmp_path, env) == tmp_path / "rendezvous" / "42.0.1.json"
    assert step_file(tmp_path, env | {"SLURM_RESTART_COUNT": "2"}) == tmp_path / "rendezvous" / "42.2.1.json"
    assert step_file(tmp_path, {"SLURM_JOB_ID": "42"}) is None  # the batch shell, not a step
    assert step_file(tmp_path, {}) is None


@pytest.mark.fast
def test_rank_0_publishes_a_port_the_kernel_chose_and_the_others_join(tmp_path: Path):
    path = tmp_path / "rendezvous" / "7.0.1.json"
    found: dict[int, tuple] = {}

    def rank(r: int) -> None:
        found[r] = published_store(path, RankInfo(r, 2, 0), "127.0.0.1", timeout_s=30)

    joiner = threading.Thread(target=rank, args=(1,))
    joiner.start()  # the other rank may come first: it waits for the file
    rank(0)
    joiner.join(30)
    (store0, address0), (store1, address1) = found[0], found[1]
    assert address0 == address1 == "127.0.0.1" and store0.port == store1.port != 0
    store1.set("hello", "world")
    assert store0.get("hello") == b"world"


@pytest.mark.fast
def test_a_rank_waits_for_rank_0_then_says_where_it_looked(tmp_path: Path):
    with pytest.raises(TimeoutError, match="rank 0 published no rendezvous at .* in 0.5 s"):
        published_store(tmp_path / "never.json", RankInfo(1, 2, 0), "127.0.0.1", timeout_s=0.5)


def test_on_a_host_of_its_own_the_route_to_another_host_goes_through_its_network_card():
    """Not in the fast tier (it makes two hosts): a rank there must not pick ``lo``."""
    import sys

    from tests.fixtures.hosts import Hosts

    hosts = Hosts("x1", 2).start()
    try:
        code = ("from jobs.rank.rendezvous import interface_env; import json, sys; "
                "print(json.dumps(interface_env({}, sys.argv[1])))")
        proc = hosts.run(hosts.nodes[0], [sys.executable, "-c", code, hosts.nodes[1]],
                         cwd=str(Path(__file__).parents[1]))
    finally:
        hosts.stop()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == dict.fromkeys(["GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "HOROVOD_GLOO_IFACE"],
                                                    "eth0")
