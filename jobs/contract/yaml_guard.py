"""Reading YAML that could be anything: a one-line :class:`ConfigError` for all that is not a config.

Every YAML file podrun reads (job specs, recipes, cluster files, resolved configs, launch
plans) and every ``--set`` value goes through :func:`load_yaml_text`. PyYAML's safe loader
already refuses to build objects; on top of it this module refuses:

* files over :data:`MAX_BYTES` (a config is a few KB: a bigger file is the wrong file),
  anything but a regular file, binary data (NUL bytes), UTF-16/32 and other non-UTF-8 text;
* duplicate keys in a mapping (PyYAML keeps the last one silently); a merge key (``<<``)
  may still be overridden, as YAML intends;
* nesting deeper than :data:`MAX_DEPTH` (checked on the event stream, before anything is
  built, so a ``[[[[...`` bomb costs no recursion);
* aliases that expand to more than :data:`MAX_VALUES` values ("billion laughs"), or that
  refer to themselves (``&a [*a]``): the built document is walked once, iteratively, with
  a budget, before anything else (the ``${VAR}`` expansion, pydantic) walks it.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

from jobs.contract.errors import ConfigError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 200_000
_WIDE_BOMS = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32", codecs.BOM_UTF16_LE: "UTF-16",
              codecs.BOM_UTF16_BE: "UTF-16"}


class MalformedYaml(ConfigError):
    """The text is not YAML at all (``--set`` then takes it as a plain string)."""


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster


class _StrictLoader(_SafeLoader):
    """The safe loader, with duplicate keys as an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML reports it below
                continue
            if duplicate:
                raise _DuplicateKey(None, None, f"duplicate key '{key}' (a key may appear once per mapping)",
                                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_config_bytes(path: Path) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_BYTES`, in UTF-8.

    Raises:
        ConfigError: missing, not a regular file, too big, binary, or not UTF-8.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a folder, a device or a pipe): give a YAML file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size / 2**20:.1f} MiB is too big for a podrun config (at most "
                          f"{MAX_BYTES // 2**20} MiB): is this the right file?")
    with open(path, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    return decode_text(data, str(path))


def decode_text(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text (a UTF-8 byte order mark is dropped).

    Raises:
        ConfigError: UTF-16/32, NUL bytes (binary data) or bytes that are not UTF-8.
    """
    for bom, name in _WIDE_BOMS.items():
        if data.startswith(bom):
            raise ConfigError(f"{source}: {name} text; podrun reads UTF-8: convert it with "
                              f"iconv -f {name} -t UTF-8")
    if b"\x00" in data:
        raise ConfigError(f"{source}: binary data (NUL bytes), not YAML text: is this the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02X} on line {line}): save it as "
                          "UTF-8, e.g. iconv -f LATIN1 -t UTF-8") from None


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document with the limits above.

    Raises:
        MalformedYaml: not YAML (the message gives the line and column).
        ConfigError: a duplicate key, nesting deeper than :data:`MAX_DEPTH`, or aliases
            that expand without end.
    """
    try:
        _check_depth(text, source)
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: {_describe(exc).replace('malformed YAML', 'YAML')}") from None
    except yaml.YAMLError as exc:
        raise MalformedYaml(f"{source}: {_describe(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nests too deeply to read") from None
    _check_size(data, source)
    return data


def _describe(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"malformed YAML{where}: {problem}"


def _check_depth(text: str, source: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise ConfigError(f"{source}: nests deeper than {MAX_DEPTH} levels (line {line}): "
                                  "no podrun config does; is this the right file?")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_size(data: Any, source: str) -> None:
    """Walk the built document once, as its readers will, with a budget and a cycle check."""
    budget = MAX_VALUES
    stack: list[tuple[Any, frozenset[int]]] = [(data, frozenset())]
    while stack:
        value, parents = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(f"{source}: expands to more than {MAX_VALUES} values (aliases that repeat "
                              "aliases, a 'billion laughs'): write the values out")
        if not isinstance(value, (dict, list)):
            continue
        if id(value) in parents:
            raise ConfigError(f"{source}: an alias refers to the mapping or list that holds it (&a ... *a): "
                              "it would never end; write the values out")
        inner = parents | {id(value)}
        items = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        stack.extend((item, inner) for item in items)
