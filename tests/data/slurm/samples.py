"""The format of the sample files in ``tests/data/slurm/<release>/<command>.txt`` (see README.md there).

A file opens with ``#`` lines (the command, where its samples come from), then holds sections::

    == CASE | SOURCE | {"state": "PENDING", "reason": "Priority"}
    <the command's output, as it printed it>

SOURCE is ``recorded`` or ``derived``; the JSON holds what podrun must read from the output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = {
    "squeue-job": 'squeue -h -j ID -o "%T|%r"',
    "scontrol-job": "scontrol show job -o ID",
    "sacct": "sacct -n -X -P -j ID -o State,ExitCode",
    "sbatch": "sbatch --parsable ...",
    "squeue-name": 'squeue -h --states=all --name=N -o "%A|%k"',
    "sinfo": 'sinfo -h -N -o "%N %T"',
    "version": "scontrol --version",
}


@dataclass
class Sample:
    release: str
    command: str  # a key of COMMANDS
    case: str
    source: str  # recorded | derived
    expect: dict
    output: str

    @property
    def id(self) -> str:
        return f"{self.release}/{self.command}/{self.case}"


def read_samples(path: Path) -> list[Sample]:
    """The sections of one sample file."""
    release, command = path.parent.name, path.stem
    samples: list[Sample] = []
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("== "):
            case, source, expect = line[3:].rstrip("\n").split(" | ", 2)
            samples.append(Sample(release, command, case, source, json.loads(expect), ""))
        elif samples:
            samples[-1].output += line
    return samples


def all_samples(root: Path = HERE) -> list[Sample]:
    """Every sample of every release, in file order."""
    return [sample for path in sorted(root.glob("*/*.txt")) for sample in read_samples(path)]


def write_samples(path: Path, header: list[str], samples: list[Sample]) -> None:
    """Write ``samples`` (of one release and command) under the ``#`` lines of ``header``."""
    lines = [f"# {COMMANDS[path.stem]}\n", *(f"# {line}\n" for line in header)]
    for sample in samples:
        lines.append(f"== {sample.case} | {sample.source} | {json.dumps(sample.expect)}\n")
        lines.append(sample.output if sample.output.endswith("\n") or not sample.output else sample.output + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
