"""Where a rank's thread is, and the words that name a hung rank (the watchdog's message, :mod:`jobs.rank.watchdog`).

:func:`where_is` reads a thread's stack for its heartbeat: its innermost line, the innermost
line of podrun's or the recipe's own code, and whether it waits in a collective. The
``*_part`` functions turn heartbeats into the parts of the watchdog's one-line message; past a
few ranks, :func:`named_parts` groups the others by the line they are at.
"""

from __future__ import annotations

import linecache
import os
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from jobs.rank.flight_recorder import compact_ranks

MAX_FRAMES = 64  # how deep a heartbeat looks into the loop's stack
REPO = Path(__file__).resolve().parents[2]
# Where the loop waits for the other ranks, by the innermost frame's file (see where_is).
COLLECTIVE_FILES = {"/torch/distributed/": "torch.distributed", "/jobs/rank/dist.py": "podrun",
                    "/torch/nn/parallel/distributed.py": "DDP", "/horovod/": "Horovod"}


# ------------------------------------------------------------------ where a thread is


def where_is(frame: FrameType | None, world_size: int) -> dict[str, str]:
    """Where a thread is (its innermost frame first): its line, our own code's line, and its state.

    ``state`` is ``collective`` when the innermost frame waits for the other ranks
    (torch.distributed, podrun's collectives, DDP's own, Horovod, or backward under DDP,
    where the gradients are all-reduced), else ``running``.
    """
    frames = []
    while frame is not None and len(frames) < MAX_FRAMES:
        frames.append(frame)
        frame = frame.f_back
    if not frames:
        return {"state": "unknown", "line": "?"}
    top = frames[0]
    where = {"state": "running", "line": _line(top), "code": _source(top)}
    collective = collective_of(top, world_size)
    if collective:
        where |= {"state": "collective", "collective": collective}
    own = next((f for f in frames if _own_code(f.f_code.co_filename)), None)
    if own is not None and own is not top:
        where |= {"caller": _line(own), "caller_code": _source(own)}
    return where


def collective_of(frame: FrameType, world_size: int) -> str | None:
    path = frame.f_code.co_filename.replace(os.sep, "/")
    for part, owner in COLLECTIVE_FILES.items():
        if part in path:
            return f"{owner} {frame.f_code.co_name}"
    if world_size > 1 and "/torch/autograd/" in path:
        return "backward: DDP all-reduces the gradients there"
    return None


def _own_code(path: str) -> bool:
    return path.startswith(str(REPO)) and "site-packages" not in path


def _line(frame: FrameType) -> str:
    return f"{short_path(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"


def _source(frame: FrameType) -> str:
    return linecache.getline(frame.f_code.co_filename, frame.f_lineno).split("  #")[0].strip()[:100]


def short_path(path: str) -> str:
    """A file as a reader finds it: relative to the repository, or from ``site-packages/`` on."""
    if _own_code(path):
        return os.path.relpath(path, REPO)
    head, found, tail = path.partition("site-packages/")
    return tail if found else path


# ------------------------------------------------------------------ the message's parts


def stopped_part(rank: int, beat: dict[str, Any], age: float) -> str:
    return (f"rank {rank} on {_host(beat)} stopped responding: its last heartbeat is {age:.0f} s old (stopped, "
            f"frozen, or its host is down), its last known line {_at(beat)}")


def culprit_part(rank: int, beat: dict[str, Any], furthest: int) -> str:
    position = beat.get("position", -1)
    if position < furthest:
        state = f"is alive but never reached micro-batch {furthest} (it is at {position})"
    else:
        state = "is alive but not in the collective the others wait in (it hangs in its own code or I/O)"
    return f"rank {rank} on {_host(beat)} {state}, at {_at(beat)}"


def waiter_part(rank: int, beat: dict[str, Any]) -> str:
    return f"rank {rank} on {_host(beat)} is alive, in a collective ({beat.get('collective', '?')}), at {_at(beat)}"


def named_parts(beats: dict[int, dict[str, Any]], one: Callable[[int, dict[str, Any]], str],
                one_by_one: int) -> list[str]:
    """A part per rank for the first ``one_by_one``; the others grouped by the line they are at (a thousand ranks)."""
    ranks = sorted(beats)
    parts = [one(rank, beats[rank]) for rank in ranks[:one_by_one]]
    groups: dict[tuple[str, str], list[int]] = {}
    for rank in ranks[one_by_one:]:
        beat = beats[rank]
        doing = f"in a collective ({beat.get('collective', '?')})" if beat.get("state") == "collective" \
            else "not in a collective"
        groups.setdefault((doing, _at(beat)), []).append(rank)
    for (doing, at), members in groups.items():
        hosts = sorted({str(beats[rank].get("host", "?")) for rank in members})
        on = f"host {hosts[0]}" if len(hosts) == 1 else f"{len(hosts)} hosts"
        also = "also " if parts else ""
        parts.append(f"{also}{ranks_word(members)} on {on}: alive, {doing}, at {at}")
    return parts


def ranks_word(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {compact_ranks(ranks)}"


def _host(beat: dict[str, Any]) -> str:
    return f"host {beat.get('host', '?')} (pid {beat.get('pid', '?')})"


def _at(beat: dict[str, Any]) -> str:
    """``FILE:LINE in FUNC [source]``, and our own code's line when the innermost is someone else's."""
    text = str(beat.get("line", "?"))
    if beat.get("code"):
        text += f" [{beat['code']}]"
    if beat.get("caller"):
        text += f", called from {beat['caller']}"
    return text
