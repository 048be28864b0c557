"""MLflow store URIs: the local file behind one, and a form that is safe to print.

No MLflow import: the launcher, the ranks and the sender all use these.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SQLITE_PREFIX = "sqlite:///"


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local store lives in (``sqlite:///x.db``, ``file:///d``, a bare path), else None.

    A relative path stays relative: :func:`absolute_store_uri` fixes that on the launcher.
    """
    if uri.startswith(SQLITE_PREFIX):
        return Path(uri[len(SQLITE_PREFIX):].split("?", 1)[0])
    if uri.startswith("file://"):
        return Path(urlsplit(uri).path)
    if "://" in uri or uri.startswith("databricks"):
        return None
    return Path(uri)


def absolute_store_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute (against this process's working directory).

    A rank or a Ray driver runs in another working directory than the user who launched
    it, so a relative store would be a different (and often temporary) file there.
    """
    path = local_store_path(uri)
    if path is None or path.is_absolute():
        return uri
    if uri.startswith(SQLITE_PREFIX):
        rest = uri[len(SQLITE_PREFIX):]
        query = rest[rest.index("?"):] if "?" in rest else ""
        return f"{SQLITE_PREFIX}{path.resolve()}{query}"
    return str(path.resolve())


def display_uri(uri: str) -> str:
    """``uri`` without a password (``http://user:***@host``), for logs and the console."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}{port}"))
