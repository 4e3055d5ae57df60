"""Tool argument types beyond the scalars (issue 19, item 10): unions, Optional, Literal, dict.

Each annotation used to raise a TypeError when the tool was defined; each now has a JSON schema, and a
model's arguments are validated against it and coerced (ints to floats where only a number fits)."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import pytest

from agentrl.tool_schema import annotation_schema, coerce, schema_problems, value_problem
from agentrl.tools import ToolBox, tool, tool_from_function
from agentrl.types import ToolCall

SEEN: list[Any] = []


@tool
def union(x: int | str) -> str:
    """Union."""
    SEEN.append(x)
    return "ok"


@tool
def optional(x: Optional[int] = None, y: Union[int, str, None] = None) -> str:  # noqa: UP045, UP007
    """Optional, the typing module's spelling."""
    SEEN.append((x, y))
    return "ok"


@tool
def literal(mode: Literal["fast", "slow"], level: Literal[1, "max", True]) -> str:
    """Literals of one type and of mixed types."""
    SEEN.append((mode, level))
    return "ok"


@tool
def objects(anything: dict, weights: dict[str, float], nested: list[dict[str, int]] | None = None) -> str:
    """Dicts, bare and typed."""
    SEEN.append((anything, weights, nested))
    return "ok"


@tool
def number_or_text(x: float | str, y: int | float) -> str:
    """Coercion under a union."""
    SEEN.append((x, y))
    return "ok"


BOX = ToolBox([union, optional, literal, objects, number_or_text])


def call(name: str, **arguments: Any) -> tuple[bool, str, Any]:
    SEEN.clear()
    r = BOX.call(ToolCall(name, arguments))
    return r.error, r.content, SEEN[-1] if SEEN else None


def schema(fn: Any) -> dict[str, Any]:
    return tool_from_function(fn).parameters["properties"]


def test_union_schema_and_validation() -> None:
    assert schema(union)["x"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert call("union", x=3) == (False, "ok", 3)
    assert call("union", x="three") == (False, "ok", "three")
    error, message, _ = call("union", x=[1])
    assert error and "argument 'x' must be an integer or a string, got list [1]" in message
    assert call("union", x=True)[0]  # a JSON boolean is not an integer


def test_optional_schema_and_validation() -> None:
    p = schema(optional)
    assert p["x"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    assert p["y"] == {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}], "default": None}
    assert call("optional") == (False, "ok", (None, None))
    assert call("optional", x=None, y="a") == (False, "ok", (None, "a"))
    error, message, _ = call("optional", y=1.5)
    assert error and "'y' must be an integer or a string or null, got number 1.5" in message


def test_literal_schema_and_validation() -> None:
    p = schema(literal)
    assert p["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert p["level"] == {"enum": [1, "max", True]}
    assert call("literal", mode="fast", level="max") == (False, "ok", ("fast", "max"))
    assert call("literal", mode="slow", level=True) == (False, "ok", ("slow", True))
    error, message, _ = call("literal", mode="fast", level=2)
    assert error and "'level' must be one of 1, \"max\", true, got integer 2" in message
    assert call("literal", mode="fast", level=1.0)[0]  # 1.0 is not the int 1 in an enum
    assert call("literal", mode="medium", level=1)[0]


def test_dict_schema_validation_and_coercion() -> None:
    p = schema(objects)
    assert p["anything"] == {"type": "object"}
    assert p["weights"] == {"type": "object", "additionalProperties": {"type": "number"}}
    ints = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert p["nested"]["anyOf"][0] == {"type": "array", "items": ints}
    error, _, seen = call("objects", anything={"a": [1, {"b": None}]}, weights={"w": 2, "v": 0.5})
    assert not error and seen[0] == {"a": [1, {"b": None}]}
    assert seen[1] == {"w": 2.0, "v": 0.5} and isinstance(seen[1]["w"], float)
    error, message, _ = call("objects", anything={}, weights={"w": "heavy"})
    assert error and "argument 'weights[\"w\"]' must be a number, got string \"heavy\"" in message
    error, message, _ = call("objects", anything=[], weights={})
    assert error and "argument 'anything' must be an object, got list" in message
    error, message, _ = call("objects", anything={}, weights={}, nested=[{"a": 1}, {"b": "x"}])
    assert error and "a list whose items are each an object whose values are each an integer" in message


def test_a_union_coerces_only_where_the_value_does_not_fit_as_it_is() -> None:
    error, _, (x, y) = call("number_or_text", x=2, y=2)
    assert not error and x == 2.0 and isinstance(x, float) and y == 2 and isinstance(y, int)
    assert call("number_or_text", x="2", y=2.5)[2] == ("2", 2.5)
    items = {"anyOf": [{"type": "number"}, {"type": "string"}]}
    assert coerce([1, "a"], {"type": "array", "items": items}) == [1.0, "a"]


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (None | int, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),  # null always last
        (Optional[Literal["a"]], {"anyOf": [{"type": "string", "enum": ["a"]}, {"type": "null"}]}),  # noqa: UP045
        (dict[str, list[int]], {"type": "object", "additionalProperties": {"type": "array",
                                                                          "items": {"type": "integer"}}}),
    ],
)
def test_more_annotations(annotation: Any, expected: dict[str, Any]) -> None:
    assert annotation_schema(annotation, "here") == expected
    wrapped = {"type": "object", "properties": {"a": expected}, "required": [], "additionalProperties": False}
    assert schema_problems(wrapped) == []


def test_a_hand_written_schema_of_the_new_kinds_is_accepted_and_enforced() -> None:
    prop = {"anyOf": [{"type": "object", "additionalProperties": {"type": "boolean"}}, {"enum": ["x", 2]}]}
    parameters = {"type": "object", "properties": {"a": prop}, "required": ["a"],
                  "additionalProperties": False}
    assert schema_problems(parameters) == []
    assert value_problem({"k": True}, prop, "a") is None and value_problem(2, prop, "a") is None
    problem = value_problem(3, prop, "a")
    assert problem is not None and "an object whose values are each a boolean or one of \"x\", 2" in problem
