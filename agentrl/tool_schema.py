"""JSON Schema for tool arguments: from Python annotations, checked, and used to validate a model's call.

The annotations a tool's parameters may carry, and the schema each becomes:

| annotation | schema |
|---|---|
| ``str``, ``int``, ``float``, ``bool`` | ``{"type": "string" / "integer" / "number" / "boolean"}`` |
| ``list[X]`` | ``{"type": "array", "items": <X>}`` |
| ``dict``, ``dict[str, X]`` | ``{"type": "object"}``, ``{"type": "object", "additionalProperties": <X>}`` |
| ``Literal["a", "b"]`` (one type) | ``{"type": "string", "enum": ["a", "b"]}`` |
| ``Literal["a", 1]`` (mixed types) | ``{"enum": ["a", 1]}`` |
| ``X | Y`` (``Union[X, Y]``) | ``{"anyOf": [<X>, <Y>]}`` |
| ``X | None`` (``Optional[X]``) | ``{"anyOf": [<X>, {"type": "null"}]}`` |

Anything else (``Any``, ``tuple``, ``set``, a bare ``list``, a ``dict`` whose keys are not ``str``, a
dataclass) is a TypeError naming the parameter, when the tool is defined.

Validation (``argument_problems``) follows JSON's types, not Python's: a JSON ``true`` is not an integer,
an integer is a number, and an enum value must match in type as well as value (``1`` is not ``true``).
A value fits ``anyOf`` when it fits one of its options. Every problem is a sentence the model can read
("argument 'x' must be an integer or a string, got list [1]"). ``coerce`` then turns the JSON integers
given where only a number fits into floats, so a ``float`` parameter always receives a float.

This module imports no torch.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
KINDS = ("string", "integer", "number", "boolean", "array", "object", "null")
TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "a list",
    "object": "an object",
    "null": "null",
}
SUPPORTED = "str, int, float, bool, list[X], dict[str, X], Literal[...], X | Y or X | None"


# ---- annotations -> schema --------------------------------------------------------------------------


def annotation_schema(annotation: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one supported annotation (module docstring); TypeError naming ``where``."""
    if annotation in JSON_TYPES:
        return {"type": JSON_TYPES[annotation]}
    if annotation is dict:
        return {"type": "object"}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return {"type": "array", "items": annotation_schema(args[0], f"{where} (list item)")}
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            raise TypeError(f"{where}: a dict's keys must be str (JSON's object keys are): {annotation!r}")
        return {"type": "object", "additionalProperties": annotation_schema(args[1], f"{where} (dict value)")}
    if origin is Literal:
        return _literal_schema(args, where)
    if origin in (typing.Union, types.UnionType):
        options = [annotation_schema(a, where) for a in args if a is not type(None)]
        if type(None) in args:
            options.append({"type": "null"})  # last, as Optional[X] has always been written
        return {"anyOf": options}
    raise TypeError(f"{where}: unsupported annotation {annotation!r}; use {SUPPORTED}")


def _literal_schema(values: tuple[Any, ...], where: str) -> dict[str, Any]:
    kinds = {type(v) for v in values}
    if not values or not kinds <= set(JSON_TYPES):
        raise TypeError(f"{where}: Literal values must be str, int, float or bool: {values!r}")
    if len(kinds) == 1:
        return {"type": JSON_TYPES[next(iter(kinds))], "enum": list(values)}
    return {"enum": list(values)}


# ---- checking a schema ------------------------------------------------------------------------------


def property_problems(prop: Any, where: str) -> list[str]:
    """Why ``prop`` is not a property schema of a supported kind (empty if it is)."""
    if not isinstance(prop, dict):
        return [f"{where}: expected a schema object, got {type(prop).__name__}"]
    if "anyOf" in prop:
        options = prop["anyOf"]
        if not isinstance(options, list) or len(options) < 2:
            return [f"{where}: anyOf must be a list of at least two schemas"]
        return [p for i, o in enumerate(options) for p in property_problems(o, f"{where} anyOf[{i}]")]
    kind = prop.get("type")
    if "enum" in prop:
        return _enum_problems(prop["enum"], kind, where)
    if kind not in KINDS:
        return [f"{where}: unsupported type {kind!r} (expected one of {', '.join(KINDS)})"]
    if kind == "array":
        if "items" not in prop:
            return [f"{where}: an array needs 'items'"]
        return property_problems(prop["items"], f"{where} items")
    if kind == "object":
        if "properties" in prop:
            return [f"{where}: nested 'properties' are not supported; use additionalProperties: <schema>"]
        values = prop.get("additionalProperties")
        return [] if values is None else property_problems(values, f"{where} values")
    return []


def _enum_problems(enum: Any, kind: Any, where: str) -> list[str]:
    if kind is not None and kind not in ("string", "integer", "number", "boolean"):
        return [f"{where}: an enum's type must be string, integer, number or boolean, got {kind!r}"]
    scalars = isinstance(enum, list) and enum and all(type(v) in JSON_TYPES for v in enum)
    if not scalars or (kind is not None and any(value_problem(v, {"type": kind}, "") for v in enum)):
        words = TYPE_WORDS[kind] if kind else "a string, number or boolean"
        return [f"{where}: enum must be a non-empty list of {words} values"]
    return []


def schema_problems(parameters: Any) -> list[str]:
    """Why ``parameters`` is not a valid tool parameters schema of the supported kind (empty if valid)."""
    if not isinstance(parameters, dict):
        return [f"expected a dict, got {type(parameters).__name__}"]
    if parameters.get("type") != "object":
        return [f"top-level 'type' must be 'object', got {parameters.get('type')!r}"]
    props, required = parameters.get("properties", {}), parameters.get("required", [])
    if not isinstance(props, dict):
        return ["'properties' must be a dict"]
    problems: list[str] = []
    for key, prop in props.items():
        if not isinstance(key, str) or not key.isidentifier():
            problems.append(f"property name {key!r} is not a Python identifier")
        problems += property_problems(prop, f"property {key!r}")
    if not isinstance(required, list) or any(r not in props for r in required):
        problems.append(f"'required' must list properties that exist, got {required!r}")
    if parameters.get("additionalProperties", False) is not False:
        problems.append("'additionalProperties' must be false")
    if not is_json(parameters):
        problems.append("the schema is not JSON-serialisable")
    return problems


def is_json(value: Any) -> bool:
    """Whether ``json.dumps`` writes ``value`` (no NaN or infinity)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


# ---- validating and coercing values -----------------------------------------------------------------


def describe_schema(prop: dict[str, Any]) -> str:
    """Human words for the values a property schema accepts ("an integer", "one of 'a', 'b'", ...)."""
    if "anyOf" in prop:
        return " or ".join(describe_schema(o) for o in prop["anyOf"])
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        return f"a list whose items are each {describe_schema(prop['items'])}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"an object whose values are each {describe_schema(prop['additionalProperties'])}"
    return TYPE_WORDS.get(kind or "", "a value")


def json_type_word(value: Any) -> str:
    """The JSON type of a parsed value, in words ("integer", "list", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object" if isinstance(value, dict) else type(value).__name__


_FITS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def value_problem(value: Any, prop: dict[str, Any], path: str) -> str | None:
    """None if ``value`` fits ``prop``; else what is wrong (module docstring for the rules)."""
    if "anyOf" in prop:
        fits = any(value_problem(value, o, path) is None for o in prop["anyOf"])
        return None if fits else _wrong(value, prop, path)
    kind = prop.get("type")
    if kind is not None and not _FITS.get(kind, lambda v: True)(value):
        return _wrong(value, prop, path)
    if "enum" in prop and not any(value == v and type(value) is type(v) for v in prop["enum"]):
        return _wrong(value, prop, path)
    if kind == "array":
        for i, item in enumerate(value):
            problem = value_problem(item, prop["items"], f"{path}[{i}]")
            if problem:
                return problem
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        for key, item in value.items():
            problem = value_problem(item, prop["additionalProperties"], f"{path}[{json.dumps(key)}]")
            if problem:
                return problem
    return None


def _wrong(value: Any, prop: dict[str, Any], path: str) -> str:
    shown = json.dumps(value) if is_json(value) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"argument '{path}' must be {describe_schema(prop)}, got {json_type_word(value)} {shown}"


def argument_problems(parameters: dict[str, Any], arguments: Any) -> list[str]:
    """Every problem with ``arguments`` against a tool's schema: missing, unexpected and mistyped ones."""
    if not isinstance(arguments, Mapping):
        return [f"arguments must be a JSON object, got {json_type_word(arguments)}"]
    props: dict[str, Any] = parameters.get("properties", {})
    missing = [k for k in parameters.get("required", []) if k not in arguments]
    extra = [k for k in arguments if k not in props]
    problems = [f"missing required argument '{k}'" for k in missing]
    problems += [f"got unexpected argument '{k}'" for k in extra]
    for key, value in arguments.items():
        if key in props:
            problem = value_problem(value, props[key], key)
            if problem:
                problems.append(problem)
    return problems


def coerce(value: Any, prop: dict[str, Any]) -> Any:
    """``value`` (valid against ``prop``) with each JSON integer that only a ``number`` takes as a float.

    Under ``anyOf`` the first option the value fits as it is wins (``int | float`` keeps an int), else
    the first it fits at all (``float | str`` makes it a float).
    """
    if "anyOf" in prop:
        fits = [o for o in prop["anyOf"] if value_problem(value, o, "") is None]
        exact = [o for o in fits if coerce(value, o) is value]
        return coerce(value, (exact or fits)[0]) if fits else value
    kind = prop.get("type")
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "array" and isinstance(value, list):
        items = [coerce(v, prop["items"]) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    values = prop.get("additionalProperties")
    if kind == "object" and isinstance(values, dict) and isinstance(value, dict):
        coerced = {k: coerce(v, values) for k, v in value.items()}
        return value if all(coerced[k] is v for k, v in value.items()) else coerced
    return value
