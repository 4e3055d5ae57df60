"""How a config section checks itself: each field's value against its type hint, then the section's own
rules, with one-line messages that start with the field's dotted path.

``agentrl.config`` builds every section on ``Section``; a section's ``_validate`` adds its ranges and
rules through ``_check`` (``ppo.clip_high: expected a number >= 0, got -1.0``). This module imports no
torch.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value, key, override or file. The message is one line and starts with what is at
    fault: a dotted field path, ``unknown key``, ``--set`` or ``config``."""

    def __init__(self, message: str) -> None:
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)).strip())


def show(value: Any) -> str:
    """A value as the message shows it: YAML words for None and bools, a short repr otherwise."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(tp: Any) -> str:
    """What a value of type ``tp`` looks like, for messages: ``a number or null``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in get_args(tp))
    if origin is Literal:
        choices = ", ".join(repr(a) for a in get_args(tp))
        return choices if len(get_args(tp)) == 1 else f"one of {choices}"
    if origin is tuple:
        return f"a list of {len(get_args(tp))} numbers"
    if origin is dict or is_dataclass(tp):
        return "a mapping"
    words = {type(None): "null", bool: "true or false", int: "an int", str: "a string"}
    return words.get(tp, "a finite number")  # float


def coerce(value: Any, tp: Any, path: str) -> tuple[bool, Any]:
    """``(True, value as tp)`` or ``(False, None)``; a mapping for a section builds it (its own errors)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            ok, out = coerce(value, arg, path)
            if ok:
                return True, out
        return False, None
    if origin is Literal:
        return isinstance(value, str) and value in get_args(tp), value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            return False, None
        items = [coerce(v, a, path) for v, a in zip(value, args, strict=True)]
        return all(ok for ok, _ in items), tuple(out for _, out in items)
    if origin is dict:
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        return ok, dict(value) if ok else None
    if is_dataclass(tp):
        if isinstance(value, tp):
            return True, value
        if value is None or isinstance(value, Mapping):  # an empty YAML section is None
            return True, from_mapping(tp, value or {}, path)
        return False, None
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return number and isinstance(value, int), value
    if tp is float:
        return number and math.isfinite(value), float(value) if number else None
    if tp is str:  # a name like 2024 reads as an int in YAML; take it as the text it was
        return isinstance(value, str) or number, value if isinstance(value, str) else str(value)
    raise TypeError(f"config: unsupported field type {tp!r}")


def require(ok: bool, path: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{path}: expected {expected}, got {show(value)}")


def checked(prefix: str, build: Callable[[], T]) -> T:
    """``build()``, with a ValueError's message (which starts with a field name) put under ``prefix``."""
    try:
        return build()
    except ValueError as e:
        raise ConfigError(f"{prefix}.{e}") from None


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_mapping(cls: type[T], data: Mapping[Any, Any], path: str) -> T:
    """Build section ``cls`` from ``data``, refusing keys it does not have."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            dotted = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key {dotted!r} (known: {', '.join(names)})")
    return cls(**data)


class Section:
    """Checks on construction: each field's type (coercing int to float, list to tuple), then
    ``_validate``. ``SECTION`` is the section's dotted path, which starts every message."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            ok, out = coerce(value, hints[f.name], self._path(f.name))
            require(ok, self._path(f.name), describe(hints[f.name]), value)
            object.__setattr__(self, f.name, out)  # frozen: the coerced value replaces the given one
        self._validate()

    def _path(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def _check(self, name: str, ok: bool, expected: str) -> None:
        require(ok, self._path(name), expected, getattr(self, name))

    def _validate(self) -> None:
        pass
