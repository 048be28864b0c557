"""The one rule for what leaves the machine: secrets are dropped from records, masked in text.

A value is secret when its key looks secret (``token``, ``password``, ``api_key``...), or
its text looks like a credential (a known token format, a private key, ``user:password@``
in a URL, a long mixed-case random string, or the value of a secret-named environment
variable such as ``RAY_AUTH_TOKEN``): :func:`secret_reason` decides, and nothing else does.

- Key/value records that need not keep every key (MLflow params and tags, through
  :func:`clean_strings`, and so the spool) drop the entry, with a warning naming the key only.
- Text that must keep its shape (artifacts such as ``config.resolved.yaml``, ``render.txt``
  and ``job.sbatch``, log lines, tracking URIs and commands podrun prints) keeps the key and
  shows ``***`` for the value (:func:`mask_text`, :func:`mask_uri`, :class:`MaskSecrets`).

A ``${VAR}`` reference is not a secret (it names where the value comes from), so it is
never masked. An MLflow URI's password never travels in the URI: :func:`split_credentials`
turns it into MLflow's own ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH

# "tokenizer", "max_tokens", "author" and "auth_mode" are ordinary names; "authorization" is not
_SECRET_KEY = re.compile(
    r"token(?!iz|s)|passw(?:or)?d|secret|api[_-]?key|credential|private[_-]?key"
    r"|auth(?!or(?!iz)|[_-]?(?:mode|type|method))",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{20,}|glpat-[\w-]{20,}|hf_[A-Za-z0-9]{30,}"
    r"|sk-[\w-]{20,}|xox[abprs]-[\w-]{10,}|AKIA[0-9A-Z]{16})"
    r"|\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\."  # a JWT
)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")  # user:password@ in a URL
_LONG_RUN = re.compile(r"[A-Za-z0-9]{24,}")
MASK = "***"


def secret_reason(key: str, value: str, known_secrets: frozenset[str] = frozenset()) -> str | None:
    """Why ``key``/``value`` must not be logged (``None`` if it may be)."""
    if _SECRET_KEY.search(key):
        return "its name looks secret"
    if _SECRET_VALUE.search(value) or _URL_PASSWORD.search(value) or any(s in value for s in known_secrets):
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



# --------------------------------------------------------------------------- masking text

# KEY=value anywhere; KEY: value where a YAML key starts a line, or "KEY": value (JSON)
_VALUE = r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,;}'"]+)"""
_ASSIGNMENTS = (
    re.compile(r"(?P<key>\b[A-Za-z_][\w.-]*)(?P<sep>=)" + _VALUE),
    re.compile(r"(?P<key>^[ \t-]*[A-Za-z_][\w.-]*|\"[A-Za-z_][\w.-]*\")(?P<sep>[ \t]*:[ \t]*)" + _VALUE,
               re.MULTILINE),
)
_REFERENCE = re.compile(r"""^["']?\$\{[A-Za-z_]\w*(?::-[^}]*)?\}["']?$""")
_NOT_SECRET = {"", MASK, "null", "none", "true", "false"}


def mask_text(text: str, known_secrets: frozenset[str] = frozenset()) -> str:
    """``text`` with every secret (by :func:`secret_reason`'s rule) shown as ``***``, keys kept."""
    for secret in sorted(known_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = mask_uri(text)
    for assignment in _ASSIGNMENTS:
        text = assignment.sub(_mask_assignment, text)
    text = _SECRET_VALUE.sub(MASK, text)
    return _LONG_RUN.sub(lambda m: MASK if _mixed_case_and_digits(m.group(0)) else m.group(0), text)


def _mask_assignment(match: re.Match[str]) -> str:
    key, value = match.group("key").strip(" \t-\"'"), match.group("value")
    bare = value.strip("\"'")
    # a reference names where the value comes from; a path (token_file) is not the secret itself
    if (not _SECRET_KEY.search(key) or _REFERENCE.match(value) or bare.lower() in _NOT_SECRET
            or bare.startswith(("/", "~"))):
        return match.group(0)
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match.group('key')}{match.group('sep')}{quote}{MASK}{quote}"


def mask_uri(uri: str) -> str:
    """A URI fit to print: ``http://user:***@host`` (the password never shows)."""
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", uri)


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """``http://user:pw@host/`` -> (``http://host/``, MLflow's username/password variables).

    A URI without ``user:password@`` comes back unchanged, with no variables.
    """
    parts = urlsplit(uri)
    if not parts.scheme.startswith("http") or "@" not in parts.netloc:
        return uri, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    credentials = {"MLFLOW_TRACKING_USERNAME": unquote(user)} if user else {}
    if password:
        credentials["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    return urlunsplit(parts._replace(netloc=host)), credentials


def export_credentials(uri: str) -> str:
    """``uri`` without ``user:password@``; the credentials go to this process's environment
    (as MLflow's variables, unless already set), where MLflow's client and its children read them.
    """
    uri, credentials = split_credentials(uri)
    for name, value in credentials.items():
        os.environ.setdefault(name, value)
    return uri


class MaskSecrets(logging.Filter):
    """A log handler filter that masks secrets in every message (see :func:`mask_text`)."""

    def __init__(self, known_secrets: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.known_secrets = known_secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message, self.known_secrets)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_log_masking() -> None:
    """Mask secrets in everything this process logs (a stderr handler is added if there is none)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    known = known_secret_values()
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, MaskSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(MaskSecrets(known))
