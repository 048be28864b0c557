"""The backends, registered by name and imported only when used (Ray loads only for Ray).

A new backend (Kubernetes, say) is one file with a :class:`orchestrator.backends.base.Backend`
subclass, and one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.backends.base import Backend

BACKENDS = {
    "local": "orchestrator.backends.local:LocalBackend",
    "slurm": "orchestrator.backends.slurm:SlurmBackend",
    "ray": "orchestrator.backends.ray_backend:RayBackend",
}


def check_backend_name(name: str) -> str:
    """A pydantic validator: ``name`` must be a registered backend."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; backends: {', '.join(sorted(BACKENDS))}")
    return name


def get_backend(name: str) -> Backend:
    """Import and build a backend by name.

    Raises:
        PodrunError: the backend is unknown.
    """
    from orchestrator.errors import PodrunError

    if name not in BACKENDS:
        raise PodrunError(f"backend '{name}' is not available; available: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
