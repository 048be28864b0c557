"""Files and folders readable by their owner only: job folders, scripts, configs, records.

A job's folder is created 0700 and its files 0600, so neither a config nor a log nor a
rendered script can be read by another user of a shared login node or file system.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make it readable by its owner only.

    Raises:
        OSError: the folder cannot be created or its mode set.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    return path


def write_private(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """Write ``text`` to ``path``, created with ``mode`` (owner only) before any byte is written.

    Raises:
        OSError: the file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)  # an existing file keeps its old mode otherwise
        handle.write(text)
