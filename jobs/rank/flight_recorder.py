"""PyTorch's Flight Recorder: its settings, a rank's dump, and which ranks a hung collective waits for.

The Flight Recorder keeps the last collectives of every process group in a ring buffer
(``torch.distributed``'s C++ side). podrun turns it on for NCCL through
:func:`flight_recorder_env` (part of :func:`jobs.rank.watchdog.collective_fault_env`, which
every backend puts in the ranks' environment), and the watchdog asks each live rank to dump it
when the job hangs (:func:`dump_trace`). Reading the dumps of all ranks
(:func:`missing_from_collective`) names the collective the job hangs in and the ranks that
never reached it.

Variable names, from torch's own source: torch 2.13 (here) reads ``TORCH_FR_BUFFER_SIZE``
and then ``TORCH_NCCL_TRACE_BUFFER_SIZE`` (``FlightRecorder.hpp``), ``TORCH_FR_DUMP_TEMP_FILE``
and then ``TORCH_NCCL_DEBUG_INFO_TEMP_FILE`` (the dump file's prefix), and still only
``TORCH_NCCL_DUMP_ON_TIMEOUT`` and ``TORCH_NCCL_ENABLE_MONITORING`` (``ProcessGroupNCCL.hpp``).
Releases before the ``TORCH_FR_*`` names read only the ``TORCH_NCCL_*`` ones, so both are set,
to the same value. torch 2.13 records gloo's collectives too (``gloo:all_reduce``), by default.

The dump format is torch's documented one (a pickle of ``version``, ``pg_config``,
``pg_status`` and ``entries``); it is read here with an unpickler that builds only plain
values, never a class, so a planted file cannot run code.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUFFER_ENTRIES = 2000  # torch's own default where it has one: the last 2,000 collectives
DUMP_PREFIX = "nccl-timeout-rank-"  # NCCL's own dump on its timeout: <job_dir>/hang/nccl-timeout-rank-<rank>
# The watchdog's request: one file per kind and rank, named as NCCL names its own (<prefix><rank>), the form
# torch's analyzer takes (`python -m torch.distributed.flight_recorder.fr_trace DIR -p PREFIX`; 2.13's fails
# on a gloo dump, whose pg_config names the default group '' where its entries say '0').
OWN_DUMP = "flight-recorder-{kind}-rank-{rank}"
DUMP_TIMEOUT_S = 2.0  # a dump that takes longer (a CUDA event query can hang) is given up
# torch's dump functions: the CPU recorder (gloo, and NCCL where it shares it) and NCCL's own.
DUMP_FUNCTIONS = {"cpu": "_dump_fr_trace", "nccl": "_dump_nccl_trace"}


def flight_recorder_env() -> dict[str, str]:
    """The ranks' environment: record the last collectives, and let NCCL dump them when it times out."""
    size = str(BUFFER_ENTRIES)
    return {"TORCH_FR_BUFFER_SIZE": size, "TORCH_NCCL_TRACE_BUFFER_SIZE": size,
            "TORCH_NCCL_DUMP_ON_TIMEOUT": "1", "TORCH_NCCL_ENABLE_MONITORING": "1"}


def dump_file_env(hang_dir: Path) -> dict[str, str]:
    """Where NCCL writes its own dump on a timeout (read by torch when it first dumps, so a rank may set it late)."""
    prefix = str(Path(hang_dir) / DUMP_PREFIX)
    return {"TORCH_FR_DUMP_TEMP_FILE": prefix, "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": prefix}


def dump_trace(folder: Path, rank: int, timeout_s: float = DUMP_TIMEOUT_S) -> list[Path]:
    """Write this rank's Flight Recorder buffers into ``folder``; the files written (none without a process group)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return []
    import torch._C._distributed_c10d as c10d

    written = []
    for kind, name in DUMP_FUNCTIONS.items():
        dump = getattr(c10d, name, None)
        data = _bounded(dump, timeout_s) if dump is not None else None
        if data:
            path = Path(folder) / OWN_DUMP.format(kind=kind, rank=rank)
            path.write_bytes(data)
            written.append(path)
    return written


def _bounded(dump: Callable[..., bytes], timeout_s: float) -> bytes | None:
    """``dump()`` in a thread of its own, given up after ``timeout_s`` (it queries CUDA events, which can hang)."""
    result: list[bytes] = []
    # Each collective's Python stack only where torch._dynamo is loaded already (torch.compile):
    # symbolizing imports it, 2 s of a CPU at the worst moment. The stacks files say where each rank is.
    stacks = "torch._dynamo" in sys.modules

    def run() -> None:
        try:
            result.append(dump(True, stacks, False))  # every collective in the buffer, completed ones too
        except Exception:  # noqa: BLE001 - a dump that fails is a dump we do not have
            pass

    thread = threading.Thread(target=run, name="podrun-flight-recorder", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return result[0] if result else None


class _PlainUnpickler(pickle.Unpickler):
    """Dicts, lists, tuples, strings and numbers only: a Flight Recorder dump needs no class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a Flight Recorder dump names no class, this one names {module}.{name}")


def read_dump(path: Path) -> dict[str, Any] | None:
    """One dump file, or None if it is not a readable Flight Recorder dump."""
    try:
        found = _PlainUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("entries", []), list) else None


def read_dumps(folders: list[Path], since: float = 0.0) -> dict[int, list[dict[str, Any]]]:
    """Every rank's dumps in ``folders`` (the watchdog's and NCCL's own) written after ``since``, by rank."""
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*rank-*")):
            rank = _rank_of(path.name)
            if rank is None or not path.name.startswith(("flight-recorder-", DUMP_PREFIX)) or _mtime(path) < since:
                continue
            dump = read_dump(path)
            if dump is not None:
                by_rank.setdefault(rank, []).append(dump)
    return by_rank


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _rank_of(name: str) -> int | None:
    found = re.search(r"rank-(\d+)$", name)
    return int(found.group(1)) if found else None


def missing_from_collective(dumps: dict[int, list[dict[str, Any]]], world_size: int) -> list[str]:
    """For each process group whose last collective did not complete everywhere: what it is, who is missing.

    ``dumps``: every rank's dumps (:func:`read_dumps`); a rank without one (stopped, or it did
    not answer) is named as such. One line per such group; none when every group is idle.
    """
    groups = _group_ranks(dumps, world_size)
    lines = []
    for group, ranks in sorted(groups.items()):
        line = _group_line(group, ranks, dumps)
        if line:
            lines.append(line)
    return lines


def _group_ranks(dumps: dict[int, list[dict[str, Any]]], world_size: int) -> dict[str, list[int]]:
    """Each process group named in the dumps, and its ranks (from ``pg_config``; the world if it says none)."""
    groups: dict[str, list[int]] = {}
    for rank_dumps in dumps.values():
        for dump in rank_dumps:
            for entry in _collectives(dump):
                groups.setdefault(_group_of(entry), [])
            for name, config in (dump.get("pg_config") or {}).items():
                ranks = _parse_ranks(config.get("ranks") if isinstance(config, dict) else None)
                if ranks and str(name) in groups:
                    groups[str(name)] = ranks
    return {name: ranks or list(range(world_size)) for name, ranks in groups.items()}


def _collectives(dump: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in dump.get("entries") or [] if isinstance(e, dict) and not e.get("is_p2p")
            and isinstance(e.get("collective_seq_id"), int)]


def _group_of(entry: dict[str, Any]) -> str:
    group = entry.get("process_group")
    return str(group[0]) if isinstance(group, (list, tuple)) and group else str(entry.get("pg_id", "?"))


def _parse_ranks(text: Any) -> list[int]:
    try:
        ranks = ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        return []
    return [int(r) for r in ranks] if isinstance(ranks, (list, tuple)) else []


def _last_collective(rank_dumps: list[dict[str, Any]], group: str) -> dict[str, Any] | None:
    entries = [e for dump in rank_dumps for e in _collectives(dump) if _group_of(e) == group]
    return max(entries, key=lambda e: e["collective_seq_id"]) if entries else None


def _group_line(group: str, ranks: list[int], dumps: dict[int, list[dict[str, Any]]]) -> str | None:
    last = {rank: _last_collective(dumps[rank], group) for rank in ranks if rank in dumps}
    seen = {rank: entry for rank, entry in last.items() if entry is not None}
    if not seen:
        return None
    top = max(entry["collective_seq_id"] for entry in seen.values())
    reached = sorted(rank for rank, entry in seen.items() if entry["collective_seq_id"] == top)
    entry = seen[reached[0]]
    behind = {rank: entry for rank, entry in seen.items() if entry["collective_seq_id"] < top}
    silent = [rank for rank in ranks if rank not in dumps]
    done = all(_completed(seen[rank]) for rank in reached)
    if not behind and done:
        if not silent:
            return None  # every rank finished the group's last collective: this group does not hang
        return (f"process group {group} ({len(ranks)} ranks): {_ranks_text(reached)} completed its last collective "
                f"#{top} {entry.get('profiling_name', '?')}; no trace from {_ranks_text(silent)} (stopped, or it did "
                "not answer)")
    head = f"process group {group} ({len(ranks)} ranks): collective #{top} {_describe(entry)}"
    parts = [f"reached by {_ranks_text(reached)}"]
    if behind:
        parts.append("missing " + ", ".join(f"rank {rank} (its last: #{e['collective_seq_id']} "
                                            f"{e.get('profiling_name', '?')})" for rank, e in sorted(behind.items())))
    if silent:
        parts.append(f"no trace from {_ranks_text(silent)} (stopped, or it did not answer)")
    if not behind and not silent:
        parts.append("every rank is in it and it does not complete (a hung network or device)")
    return f"{head}: {'; '.join(parts)}"


def _completed(entry: dict[str, Any]) -> bool:
    # NCCL: "completed" once its end event fired; gloo stays "scheduled" but retires the entry when it is done
    return entry.get("state") == "completed" or bool(entry.get("retired"))


def _describe(entry: dict[str, Any]) -> str:
    sizes = entry.get("input_sizes")
    called = next((f for f in entry.get("frames") or [] if isinstance(f, dict)
                   and "/torch/" not in str(f.get("filename", ""))), None)
    text = f"{entry.get('profiling_name', '?')} (inputs {sizes}, {entry.get('state', '?')})"
    if called:
        text += f", called from {Path(str(called.get('filename'))).name}:{called.get('line')} in {called.get('name')}"
    return text


def _ranks_text(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {compact_ranks(ranks)}"


def compact_ranks(ranks: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``0-2, 5, 7-8``: a thousand ranks in a line."""
    runs: list[list[int]] = []
    for rank in sorted(set(ranks)):
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
