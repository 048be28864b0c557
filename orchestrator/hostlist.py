"""Slurm's hostlist syntax: ``dgx[001-004,010],login1`` to a list of host names."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm hostlist (``node[1-3,7],gpu[01-02]x``) into host names, in order.

    Raises:
        ValueError: the expression is malformed.
    """
    hosts: list[str] = []
    for item in _split_top_level(hostlist.strip()):
        hosts.extend(_expand_item(item))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    items, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {text!r}")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"unbalanced '[' in hostlist {text!r}")
    items.append("".join(current))
    return [item for item in items if item]


def _expand_item(item: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", item)
    if not match:
        return [item]
    prefix, suffix = item[: match.start()], item[match.end():]
    names = []
    for part in match.group(1).split(","):
        bounds = _RANGE.match(part.strip())
        if not bounds:
            raise ValueError(f"bad range {part!r} in hostlist {item!r}")
        start, end = bounds.group(1), bounds.group(2) or bounds.group(1)
        width = len(start)
        for number in range(int(start), int(end) + 1):
            # the rest may hold another bracket group (node[1-2]-ib[0-1])
            names.extend(_expand_item(f"{prefix}{number:0{width}d}{suffix}"))
    return names
