"""The PYTHONPATH a benchmark gives the processes it starts."""

from __future__ import annotations

import os
from pathlib import Path


def with_repo(*first: Path) -> str:
    """``first`` (a checkout, usually this one), then the caller's own PYTHONPATH.

    Prepending rather than replacing keeps packages that the caller's environment put on the
    path (a GPU machine's carried wheels, say) visible to the benchmark's workers.
    """
    return os.pathsep.join([*map(str, first), *filter(None, [os.environ.get("PYTHONPATH")])])
