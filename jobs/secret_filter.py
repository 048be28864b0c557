"""What may leave the machine in a tracking record: secrets dropped, MLflow's naming rules kept.

Every param and tag goes through :func:`clean_strings`: a key whose name looks secret
(``token``, ``password``, ``api_key``...) or a value that looks like a credential (a
known token format, a private key, ``user:password@`` in a URL, a long mixed-case random
string, or the value of a secret-named environment variable) is dropped, with a warning
that names the key only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH

# "tokenizer", "max_tokens" and "author" are ordinary names; "authorization" is not
_SECRET_KEY = re.compile(
    r"token(?!iz|s)|passw(?:or)?d|secret|api[_-]?key|credential|private[_-]?key"
    r"|auth(?!or(?!iz))",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{20,}|glpat-[\w-]{20,}|hf_[A-Za-z0-9]{30,}"
    r"|sk-[\w-]{20,}|xox[abprs]-[\w-]{10,}|AKIA[0-9A-Z]{16})"
    r"|\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\."  # a JWT
    r"|://[^/\s:@]+:[^/\s@]+@"  # user:password@ in a URL
)
_LONG_RUN = re.compile(r"[A-Za-z0-9]{24,}")


def secret_reason(key: str, value: str, known_secrets: frozenset[str] = frozenset()) -> str | None:
    """Why ``key``/``value`` must not be logged (``None`` if it may be)."""
    if _SECRET_KEY.search(key):
        return "its name looks secret"
    if _SECRET_VALUE.search(value) or any(secret in value for secret in known_secrets):
        return "its value looks like a secret"
    if any(_mixed_case_and_digits(run) for run in _LONG_RUN.findall(value)):
        return "its value looks like a token"
    return None


def _mixed_case_and_digits(text: str) -> bool:
    # git SHAs and run ids are lower-case hex; random tokens mix all three classes
    return any(c.isupper() for c in text) and any(c.islower() for c in text) and any(
        c.isdigit() for c in text
    )


def known_secret_values() -> frozenset[str]:
    """Values of secret-named environment variables (e.g. ``RAY_AUTH_TOKEN``) and Ray's token."""
    values = {value for name, value in os.environ.items() if _SECRET_KEY.search(name)}
    ray_token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    try:
        values.add(ray_token.read_text().strip())
    except OSError:
        pass
    # a path (SSH_AUTH_SOCK) is not a secret, and short values would match everywhere
    return frozenset(v for v in values if len(v) >= 12 and not v.startswith(("/", "~")))


# --------------------------------------------------------------------------- cleaning


def sanitize_key(key: Any) -> str:
    """Make ``key`` a name MLflow accepts: allowed characters, no empty or dot path parts."""
    cleaned = re.sub(r"[^\w.\- :/]", "_", str(key))
    parts = [part for part in cleaned.split("/") if part not in ("", ".", "..")]
    return "/".join(parts)[:MAX_KEY].rstrip("/") or "_"


def flatten(mapping: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``("a.b", value)`` for nested mappings such as ``recipe.model_dump()``."""
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def clean_strings(
    items: dict[str, Any], what: str, limit: int, known_secrets: frozenset[str]
) -> dict[str, str]:
    """Flatten, drop secrets (warning names the key only), sanitize keys, truncate values."""
    cleaned: dict[str, str] = {}
    for key, value in flatten(items):
        text = value if isinstance(value, str) else str(value)
        reason = secret_reason(key, text, known_secrets)
        if reason:
            log.warning("tracking: dropped %s %r: %s", what, key, reason)
            continue
        cleaned[sanitize_key(key)] = text[:limit]
    return cleaned


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Sanitize metric names and turn values (tensors included) into floats."""
    cleaned: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            cleaned[sanitize_key(key)] = float(value)
        except (TypeError, ValueError):
            log.warning("tracking: dropped metric %r: %r is not a number", key, type(value).__name__)
    return cleaned

