"""Reading and validating podrun's YAML files, with errors of one line.

Every schema (the recipe and resolved job here in ``jobs/``, the cluster profiles and job
specs in ``orchestrator/``) derives from :class:`StrictModel`, which rejects unknown keys.
:func:`validate` turns pydantic's report into one line naming the file, the key path and
what was expected; an unknown key lists the keys that are valid at that place.

``${VAR}`` and ``${VAR:-default}`` in strings are expanded here, in a dozen lines, except in
the values of a mapping named ``env`` (a profile's ``env``, ``interconnect.env``,
``slurm.login.env``): those keep the reference, so a secret stays out of every file podrun
writes and the job reads it at run time (:mod:`orchestrator.spec.job_env`).
``os.path.expandvars`` knows no ``:-default`` and leaves unknown variables in place, and
``string.Template`` knows neither, so no standard or common library does exactly this.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from jobs.contract.env_refs import ENV_REF, expand_string
from jobs.contract.errors import ConfigError
from jobs.contract.yaml_guard import MalformedYaml, load_yaml_text, read_config_bytes

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what a shell takes as a variable name, and nothing else


def check_env_name(name: str) -> str:
    """``name`` if it is an environment variable name; ValueError (one line) otherwise.

    Names reach shells unquoted (``export NAME=...``), so anything else could run a command.
    """
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an environment variable name: use letters, digits and _, "
                         "not starting with a digit")
    return name


EnvName = typing.Annotated[str, AfterValidator(check_env_name)]
EnvMap = dict[EnvName, str]  # a profile's env, interconnect.env, slurm.login.env


class StrictModel(BaseModel):
    """A model that rejects unknown keys and re-validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- reading


def read_yaml(path: Path, *, expand: bool = True) -> dict[str, Any]:
    """Read a YAML mapping and expand ``${VAR}`` references in its strings (``env`` mappings excepted).

    ``expand=False`` reads it as written (a resolved job: the launcher expanded it already,
    and what is left, such as the reproducing command line, must stay as it is).

    Raises:
        ConfigError: the file is missing, is not valid YAML or is not a mapping; or it is
            binary, too big, not UTF-8, or has duplicate keys or endless aliases
            (:mod:`jobs.contract.yaml_guard`).
    """
    path = Path(path)
    data = load_yaml_text(read_config_bytes(path), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return expand_env(data) if expand else data


_ENV_REF = ENV_REF
KEPT_REFERENCES = "env"  # a mapping under this key keeps its ${VAR} references as written


def expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML document.

    The values of a mapping named ``env`` are left as written.
    """
    if isinstance(value, dict):
        return {key: item if key == KEPT_REFERENCES and isinstance(item, dict) else expand_env(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item) for item in value]
    if isinstance(value, str):
        return expand_string(value)
    return value


def env_references(text: str) -> list[tuple[str, str | None]]:
    """The ``(VAR, default or None)`` of each ``${VAR}`` / ``${VAR:-default}`` in ``text``."""
    return [(m.group(1), m.group(2)) for m in _ENV_REF.finditer(text)]


def split_references(text: str) -> list[tuple[str, re.Match[str] | None]]:
    """``text`` cut into literal pieces ``(text, None)`` and references ``(text, match)``."""
    pieces: list[tuple[str, re.Match[str] | None]] = []
    end = 0
    for match in _ENV_REF.finditer(text):
        if match.start() > end:
            pieces.append((text[end:match.start()], None))
        pieces.append((match.group(0), match))
        end = match.end()
    if end < len(text):
        pieces.append((text[end:], None))
    return pieces


# --------------------------------------------------------------------------- validating


def validate(model: type[BaseModel], data: Any, source: str, prefix: str = "") -> Any:
    """Validate ``data`` against ``model``; raise a one-line :class:`ConfigError` if it fails."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, model, source, prefix, data)) from None


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str, prefix: str = "",
                               data: Any = None) -> str:
    """Turn pydantic's errors into one line: file, key path, what was expected.

    ``data`` (what was validated) lets a section whose schema depends on a sibling key (a
    recipe's ``model:`` and ``data:``, by its ``task:``) list its own valid keys.
    """
    errors = exc.errors()
    first = errors[0]
    raw_loc = [str(part) for part in first["loc"]]
    bad_key = raw_loc[-1:] == ["[key]"]
    if bad_key:  # a mapping's key failed: show the mapping, the message names the key
        raw_loc = raw_loc[:-2]
    shown_loc, _ = walk(model, raw_loc, data)
    path = ".".join(([prefix] if prefix else []) + shown_loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        _, parent = walk(model, raw_loc[:-1], data)
        message = f"unknown key '{path}'; valid keys here: {', '.join(sorted(fields_of(parent)))}"
    elif first["type"] == "missing":
        message = f"missing required key '{path}'"
    else:
        got = first.get("input")
        shown = f" (got {got!r})" if not isinstance(got, (dict, list)) and len(repr(got)) < 80 and not bad_key else ""
        where = "" if path == "(top level)" else f"{path}: "
        message = f"{where}{first['msg'].removeprefix('Value error, ').rstrip('.')}{shown}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{source}: {message}{more}"


def walk(model: type[BaseModel], loc: list[str], data: Any = None) -> tuple[list[str], Any]:
    """Follow pydantic's error location through ``model`` (and through ``data``, when given).

    Returns the location as a user writes it (the tags of tagged unions left out) and the
    annotation reached. Free-form dict keys (profile or preset names) are kept and step to
    the value type. A model with a ``section_model(field, data)`` classmethod (the recipe)
    names the schema of a field that depends on the data.
    """
    shown: list[str] = []
    annotation: Any = model
    for part in loc:
        member = _tagged_member(annotation, part)
        if member is not None:
            annotation = member
            continue
        shown.append(part)
        found = _model_in(annotation)
        chosen = found.section_model(part, data) if hasattr(found, "section_model") else None
        annotation = chosen if chosen is not None else _step(annotation, part)
        data = data.get(part) if isinstance(data, dict) else None
    return shown, annotation


def fields_of(annotation: Any) -> list[str]:
    """The keys a mapping at this place may hold (the fields of the model found there)."""
    found = _model_in(annotation)
    return list(found.model_fields) if found is not None else []


def _step(annotation: Any, part: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is dict:
        return typing.get_args(annotation)[1]
    found = _model_in(annotation)
    if found is not None and part in found.model_fields:
        field: FieldInfo = found.model_fields[part]
        return field.annotation
    return annotation


def _tagged_member(annotation: Any, tag: str) -> Any:
    """The member of a tagged union (``Annotated[Model, Tag(tag)]``) whose tag is ``tag``."""
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Annotated:
            inner, *metadata = typing.get_args(arg)
            if any(getattr(meta, "tag", None) == tag for meta in metadata):
                return inner
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as ``X | None``, ``Annotated[X, ...]`` or a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- merging


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``update`` merged in; nested mappings merge key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` inside nested dicts, creating levels as needed."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_set(assignment: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as YAML (``3``, ``true``, ``[1,2]``).

    Raises:
        ConfigError: the assignment has no ``=`` or an empty key, or its value has a
            duplicate key or endless aliases.
    """
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, for example --set train.epochs=5")
    if not raw.strip():
        return key, ""
    try:
        return key, load_yaml_text(raw, f"--set {key}")
    except MalformedYaml:
        return key, raw  # not YAML: the text as written
