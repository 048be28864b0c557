"""The backends: how ranks start (local processes, a Slurm batch script, a Ray job).

Each is a :class:`orchestrator.backends.base.Backend` subclass, registered by name in
:mod:`orchestrator.spec.backend_names` and imported only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from orchestrator.errors import PodrunError
from orchestrator.spec.backend_names import BACKENDS

if TYPE_CHECKING:
    from orchestrator.backends.base import Backend


def get_backend(name: str) -> Backend:
    """Import and build a backend by name.

    Raises:
        PodrunError: the backend is unknown.
    """
    if name not in BACKENDS:
        raise PodrunError(f"backend '{name}' is not available; available: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
