"""Render a gateway configuration (or any TOML document) from plain data.

Tests, benchmarks and the demo build their configs as dicts and lists and
render them here, so quoting is right whatever a path, topic or id holds.
Mappings become tables, lists of mappings arrays of tables, and ``None``
values are left out (the gateway's default then applies).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

__all__ = ["TomlRenderError", "render_toml", "toml_value"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHORT_ESCAPES = {
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}


class TomlRenderError(TypeError):
    """A value that has no TOML form, named by its dotted key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key or '<document>'}: {reason}")
        self.key = key


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            # Any other character, astral ones included, is written as is
            # (TOML is UTF-8): JSON's surrogate-pair escapes are not TOML.
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise TomlRenderError(where, f"key {key!r} is not a string")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and len(value) > 0
        and all(isinstance(v, Mapping) for v in value)
    )


def toml_value(value: object, key: str = "") -> str:
    """The inline TOML form of a scalar or a list of scalars.

    Raises:
        TomlRenderError: for a value with no TOML form (``None``, bytes, objects...).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, PurePath):
        return _string(str(value))
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{_key(k, key)} = {toml_value(v, f'{key}.{k}')}"
            for k, v in value.items()
            if v is not None
        )
        return "{" + items + "}" if items else "{}"
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return "[" + ", ".join(toml_value(v, f"{key}[{i}]") for i, v in enumerate(value)) + "]"
    raise TomlRenderError(key, f"{type(value).__name__} {value!r} has no TOML form")


def _table(lines: list[str], path: list[str], table: Mapping[str, Any], dotted: str) -> None:
    nested: list[tuple[str, object]] = []
    for k, v in table.items():
        where = f"{dotted}.{k}" if dotted else str(k)
        if v is None:
            continue
        if _is_table(v) or _is_table_array(v):
            nested.append((k, v))
        else:
            lines.append(f"{_key(k, where)} = {toml_value(v, where)}")
    for k, v in nested:
        where = f"{dotted}.{k}" if dotted else k
        sub = [*path, _key(k, where)]
        header = ".".join(sub)
        if isinstance(v, Mapping):
            lines += ["", f"[{header}]"]
            _table(lines, sub, v, where)
        else:
            assert isinstance(v, Sequence)
            for item in v:
                lines += ["", f"[[{header}]]"]
                _table(lines, sub, item, where)


def render_toml(doc: Mapping[str, Any]) -> str:
    """The TOML text of ``doc``: keys in order, scalars before the sub-tables of each table.

    Raises:
        TomlRenderError: naming the dotted key of a value with no TOML form.
    """
    lines: list[str] = []
    _table(lines, [], doc, "")
    return "\n".join(lines).lstrip("\n") + "\n"
