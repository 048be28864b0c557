"""The backends by name: what a profile's ``scheduler`` and ``--backend`` may say.

Each name maps to the class that starts ranks that way (imported only when used, so Ray
loads only for Ray: :func:`orchestrator.backends.get_backend`). A new backend is one file
in :mod:`orchestrator.backends` and one line here.
"""

from __future__ import annotations

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
