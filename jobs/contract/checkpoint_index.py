"""The checkpoint folder's contract: checkpoint names, which ones are complete, and ``run.json``.

A checkpoint folder holds ``ckpt-<global step>.pt`` files, each written whole or not at
all (:func:`atomic_write_bytes`), each with its SHA-256 beside it (``ckpt-<step>.pt.sha256``,
in ``sha256sum`` format: ``sha256sum -c`` checks it), and ``run.json``, the job's run
record: its MLflow run id, tracking URI and attempts. The launcher reads them
(``--resume``, the end-of-run summary) without importing torch; :mod:`jobs.rank.checkpoint`
writes and loads the tensors.

A checkpoint whose bytes no longer match its checksum (truncated, damaged) is skipped
by :func:`verified_checkpoints`, so a resume falls back to the one before it. A checksum proves
a file intact, not who wrote it: the folder and each checkpoint must also be the user's own and
writable by nobody else (:func:`require_trusted`), or the resume is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickletools
import pwd
import re
import stat
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jobs.contract.errors import UntrustedCheckpointError

CHECKPOINT_RE = re.compile(r"^ckpt-(\d{9})\.pt$")
RUN_INFO = "run.json"
CHECKSUM_SUFFIX = ".sha256"


def checkpoint_name(global_step: int) -> str:
    return f"ckpt-{global_step:09d}.pt"


def atomic_write_bytes(path: Path, write: Callable[[Any], Any], checksum: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    With ``checksum``, the file's SHA-256 is written beside it first (``<name>.sha256``).

    Raises:
        OSError: the write failed (a full disk: ``errno.ENOSPC``); ``path`` is then as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if checksum:
            line = f"{file_sha256(tmp)}  {path.name}\n".encode()
            atomic_write_bytes(checksum_path(path), lambda handle: handle.write(line))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def checksum_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` must not be loaded (its bytes do not match the checksum saved with it), or None.

    A checkpoint without a checksum (written before podrun kept them) is not checked here;
    loading it is the test.
    """
    try:
        recorded = checksum_path(path).read_text(errors="replace").split()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"its checksum file cannot be read ({exc.strerror})"
    try:
        actual = file_sha256(path)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if not recorded or recorded[0] != actual:
        return f"sha256 {actual[:12]}... does not match the {recorded[0][:12] if recorded else 'empty'}... " \
               f"saved with it (truncated or damaged; {path.stat().st_size} bytes)"
    return None


def trust_problem(path: Path) -> str | None:
    """Why ``path`` (the job's checkpoint folder, or a checkpoint) could hold someone else's code, or None.

    Someone else owns it, or its group or others may write it (``mode & 0o022``): either could
    have replaced a checkpoint, checksum and all. Parent folders are not checked; a missing
    ``path`` is left to whoever reads it.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    me = os.geteuid()
    if info.st_uid != me:
        return f"it is owned by {_user(info.st_uid)}, not by {_user(me)}, who runs this"
    if info.st_mode & 0o022:
        who = " and ".join(name for bit, name in ((0o020, "its group"), (0o002, "others")) if info.st_mode & bit)
        return f"{who} may write it (mode {stat.filemode(info.st_mode)})"
    return None


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def require_trusted(path: Path) -> None:
    """Refuse the checkpoint folder or checkpoint ``path`` if someone else could have written it.

    Raises:
        UntrustedCheckpointError: see :func:`trust_problem`; the message says what to type.
    """
    problem = trust_problem(path)
    if problem is None:
        return
    fix = f"chmod go-w {path}" if "may write it" in problem else \
        "copy the checkpoints you trust into a folder of your own"
    raise UntrustedCheckpointError(f"{path}: refused: {problem}, so a checkpoint there may not be yours "
                                   f"and loading it could run code; if you trust it: {fix}")


def verified_checkpoints(directory: Path) -> Iterator[tuple[Path, str | None]]:
    """Each checkpoint in ``directory``, newest first, with why it must not be loaded (None: it may).

    Lazy: an older checkpoint is read only when the caller asks past the newer ones.

    Raises:
        UntrustedCheckpointError: the folder, or a checkpoint reached, is not the user's alone.
    """
    found = list_checkpoints(directory)
    if found:
        require_trusted(Path(directory))
    for path in reversed(found):
        require_trusted(path)
        yield path, checkpoint_problem(path)


# What a checkpoint's pickle may name besides torch's own tensor machinery: plain containers, and
# numpy's array (rebuilt by numpy's _reconstruct: numpy.core... in numpy 1.x, numpy._core... in 2.x)
# and dtype, which the previous format used for numpy's RNG state.
PLAIN_GLOBALS = frozenset({"collections.OrderedDict", "collections.Counter", "_codecs.encode", "builtins.set",
                           "builtins.bytearray", "builtins.complex"})
PREVIOUS_FORMAT_GLOBALS = frozenset({"numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
                                     "numpy.ndarray", "numpy.dtype"})
# Opcodes that choose what to call while loading; torch's weights-only unpickler runs none of them.
LOAD_TIME_GLOBALS = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})


def foreign_globals(path: Path) -> list[str]:
    """What the checkpoint's pickle names beyond torch, plain containers and numpy's array: read, never run.

    The launcher's early look, without torch: a rank loads with torch's weights-only unpickler,
    which knows torch's exact list. [] also when the file is not a ``torch.save`` zip that this
    can read (loading it says why).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.rsplit("/", 1)[-1] == "data.pkl"]
            data = archive.read(pickles[0]) if len(pickles) == 1 else b""
        found = set()
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if module != "torch" and not module.startswith("torch.") and \
                        f"{module}.{name}" not in PLAIN_GLOBALS | PREVIOUS_FORMAT_GLOBALS:
                    found.add(f"{module}.{name}")
            elif opcode.name in LOAD_TIME_GLOBALS:
                found.add(f"an {opcode.name} opcode")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return []
    return sorted(found)


def refusal(path: Path, why: str) -> UntrustedCheckpointError:
    """The error for a checkpoint whose pickle needs more than weights (``why``: what it names)."""
    return UntrustedCheckpointError(
        f"{path}: refused: its pickle needs more than tensors, numbers, strings, lists and dicts ({why[:200]}), "
        "so loading it could run code; podrun never writes such a file: remove it if you did not put it there")


def latest_valid_checkpoint(directory: Path, skipped: list[str] | None = None) -> Path | None:
    """The newest checkpoint whose checksum matches, or None; each one passed over is added to ``skipped``.

    Raises:
        UntrustedCheckpointError: the folder or that checkpoint is not the user's alone, or its
            pickle names something beyond torch, plain containers and numpy's array.
    """
    for path, problem in verified_checkpoints(directory):
        if problem is None:
            foreign = foreign_globals(path)
            if foreign:
                raise refusal(path, "it names " + ", ".join(foreign))
            return path
        if skipped is not None:
            skipped.append(f"{path.name}: {problem}")
    return None


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint and its checksum."""
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_run_info(directory: Path) -> dict[str, Any]:
    """The job's run record (MLflow run id, time-to-train so far), or {} when it is missing or unreadable."""
    path = Path(directory) / RUN_INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(info, dict):
        return {}
    if not isinstance(info.get("attempts", []), list):
        info.pop("attempts")
    return {key: value for key, value in info.items() if not key.startswith("mlflow_") or isinstance(value, str)}


def write_run_info(directory: Path, info: dict[str, Any]) -> None:
    """Atomically replace the job's run record."""
    payload = json.dumps(info, indent=2, sort_keys=True).encode()
    atomic_write_bytes(Path(directory) / RUN_INFO, lambda handle: handle.write(payload))


def update_run_info(directory: Path, **fields: Any) -> dict[str, Any]:
    """Set ``fields`` in the job's run record, under a lock: the rank and its MLflow sender both write it."""
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".{RUN_INFO}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = read_run_info(directory)
        info.update(fields)
        write_run_info(directory, info)
    return info
