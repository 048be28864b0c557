"""The InfiniBand check: every HCA the profile lists exists, its ports are ACTIVE at the expected rate.

It reads the kernel's sysfs, as ``ibstatus`` does: ``/sys/class/infiniband/<hca>/ports/<n>/``
holds ``state`` (``4: ACTIVE``), ``phys_state`` (``5: LinkUp``) and ``rate``
(``200 Gb/sec (4X HDR)``). A profile lists HCAs as ``mlx5_0`` (all its ports) or
``mlx5_0:1`` (one port), as ``NCCL_IB_HCA`` does. The expected rate is the profile's
``preflight.ib_rate_gbps``; without it, every listed port must run at the node's fastest
listed rate (a link that trained down to half rate stands out).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from jobs.preflight.result import CheckResult, failed, passed, skipped

SYSFS_ROOT = Path("/sys/class/infiniband")
_RATE = re.compile(r"^\s*([0-9.]+)\s*Gb/sec")


@dataclass(frozen=True)
class PortState:
    hca: str
    port: str
    state: str  # "ACTIVE", "DOWN", "INIT", ...
    phys_state: str  # "LinkUp", "Polling", "Disabled", ...
    rate_gbps: float | None
    rate_text: str

    @property
    def name(self) -> str:
        return f"{self.hca}:{self.port}"


def parse_state(text: str) -> str:
    """``"4: ACTIVE"`` -> ``"ACTIVE"`` (sysfs prefixes the IBTA number)."""
    return text.strip().split(":", 1)[-1].strip()


def parse_rate(text: str) -> float | None:
    """``"100 Gb/sec (4X EDR)"`` -> ``100.0``; None when unreadable."""
    match = _RATE.match(text)
    return float(match.group(1)) if match else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def read_ports(spec: str, root: Path = SYSFS_ROOT) -> list[PortState] | None:
    """The ports of one listed HCA (``NAME`` or ``NAME:PORT``); None when the HCA or port is absent."""
    hca, _, only = spec.partition(":")
    ports_dir = Path(root) / hca / "ports"
    if not ports_dir.is_dir():
        return None
    names = [only] if only else sorted((p.name for p in ports_dir.iterdir()), key=lambda n: (len(n), n))
    found = []
    for port in names:
        folder = ports_dir / port
        if not folder.is_dir():
            return None
        rate_text = _read(folder / "rate")
        state, phys = parse_state(_read(folder / "state")), parse_state(_read(folder / "phys_state"))
        found.append(PortState(hca, port, state, phys, parse_rate(rate_text), rate_text))
    return found


def evaluate_infiniband(hcas: list[str], expected_rate: float | None, root: Path = SYSFS_ROOT) -> CheckResult:
    """Judge the listed HCAs of this node (``hcas`` empty: the profile lists none)."""
    if not hcas:
        return skipped("profile lists no HCAs")
    problems, ports = [], []
    for spec in hcas:
        found = read_ports(spec, root)
        if found is None:
            problems.append(f"{spec} not found under {root}")
        else:
            ports += found
    problems += [f"{p.name} is {p.state or '?'} ({p.phys_state or '?'})" for p in ports if p.state != "ACTIVE"]
    active = [p for p in ports if p.state == "ACTIVE"]
    rates = [p.rate_gbps for p in active if p.rate_gbps is not None]
    target = expected_rate or (max(rates) if rates else None)
    problems += [f"{p.name} runs at {p.rate_text or '?'}, expected {target:g} Gb/sec"
                 for p in active if target is not None and p.rate_gbps != target]
    if problems:
        return failed("; ".join(problems))
    return passed(f"{len(ports)} port(s) ACTIVE" + (f" at {target:g} Gb/sec" if target else ""))
