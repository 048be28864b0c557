"""``${VAR}`` and ``${VAR:-default}`` references in strings: the one grammar configs and profile env blocks use.

Kept apart from :mod:`jobs.contract.config_io` (pydantic) so that the local supervisor can
expand a rank's environment without loading the job's models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_string(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with ``${VAR}`` and ``${VAR:-default}`` replaced (an unset VAR without default: empty)."""
    environ = os.environ if environ is None else environ
    return ENV_REF.sub(lambda m: environ.get(m.group(1), m.group(2) or ""), text)
