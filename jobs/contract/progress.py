"""The progress line a rank prints, and its parser for the launcher's terminal view.

Ranks print plain lines (they write to log files, not terminals). The launcher turns
``[train]`` lines into a rich progress bar when its own output is a terminal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROGRESS_RE = re.compile(
    r"\[train\] epoch (?P<epoch>\d+)/(?P<epochs>\d+) step (?P<step>\d+)/(?P<steps>\d+)"
    r" \| (?P<rate>[\d.]+) (?P<unit>\w+)/s \| loss (?P<loss>\S+) \| lr (?P<lr>\S+) \| eta (?P<eta>\S+)"
)


@dataclass
class ProgressLine:
    epoch: int
    epochs: int
    step: int
    steps: int
    rate: float
    unit: str
    loss: float
    lr: float
    eta: str

    def format(self) -> str:
        return (
            f"[train] epoch {self.epoch}/{self.epochs} step {self.step}/{self.steps}"
            f" | {self.rate:.1f} {self.unit}/s | loss {self.loss:.4f} | lr {self.lr:.5f} | eta {self.eta}"
        )


def format_eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def parse_progress(line: str) -> ProgressLine | None:
    """Parse a ``[train]`` line, or return None for any other line."""
    match = PROGRESS_RE.search(line)
    if not match:
        return None
    g = match.groupdict()
    return ProgressLine(int(g["epoch"]), int(g["epochs"]), int(g["step"]), int(g["steps"]), float(g["rate"]),
                        g["unit"], float(g["loss"]), float(g["lr"]), g["eta"])
