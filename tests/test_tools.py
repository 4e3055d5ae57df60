"""Tools: schemas from signatures, parsing tool calls (with fuzzing), and ToolBox's errors and time limits."""

import json
import threading
import time
from typing import Any, Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.tools import (
    CLOSE_TAG,
    OPEN_TAG,
    ParsedAction,
    Tool,
    ToolBox,
    ToolResult,
    as_tool,
    format_tool_call,
    parse_tool_calls,
    render_output,
    tool,
    tool_from_function,
    truncate,
)
from agentrl.types import ToolCall

OBJECT = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}


def props(fn: Any) -> dict[str, Any]:
    return tool_from_function(fn).parameters["properties"]


# ---- schemas from signatures --------------------------------------------------------------------------


def everything(
    s: str,
    i: int,
    x: float,
    b: bool,
    xs: list[int],
    colour: Literal["red", "green"],
    maybe: int | None = None,
    old_style: Optional[str] = "hi",  # noqa: UP045 - the typing.Optional spelling must work too
    names: list[list[str]] | None = None,
) -> str:
    """Take one of each kind.

    A second paragraph that is not part of the description.

    Args:
        s: a string.
        i (int): an integer,
            over two lines.
        x: a number.
        b: a flag.
        xs: some integers.
        colour: a colour.

    Returns:
        nothing of note.
    """
    return ""


def test_schema_from_signature_covers_every_supported_kind() -> None:
    t = tool_from_function(everything)
    assert t.name == "everything"
    assert t.description == "Take one of each kind."
    assert t.parameters == {
        "type": "object",
        "properties": {
            "s": {"type": "string", "description": "a string."},
            "i": {"type": "integer", "description": "an integer, over two lines."},
            "x": {"type": "number", "description": "a number."},
            "b": {"type": "boolean", "description": "a flag."},
            "xs": {"type": "array", "items": {"type": "integer"}, "description": "some integers."},
            "colour": {"type": "string", "enum": ["red", "green"], "description": "a colour."},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "old_style": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": "hi"},
            "names": {
                "anyOf": [{"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
                          {"type": "null"}],
                "default": None,
            },
        },
        "required": ["s", "i", "x", "b", "xs", "colour"],
        "additionalProperties": False,
    }
    assert t.schema() == {
        "type": "function",
        "function": {"name": "everything", "description": t.description, "parameters": t.parameters},
    }


def test_defaults_are_optional_and_recorded_only_when_json() -> None:
    sentinel = object()

    def f(a: int, b: int = 3, c: bool = False, d: str = "x", e: int | None = sentinel) -> str:  # type: ignore
        """F."""
        return ""

    t = tool_from_function(f)
    assert t.parameters["required"] == ["a"]
    p = t.parameters["properties"]
    assert "default" not in p["a"]
    assert (p["b"]["default"], p["c"]["default"], p["d"]["default"]) == (3, False, "x")
    assert "default" not in p["e"]  # not JSON: left out rather than written wrong


def test_literal_of_ints_and_of_bools() -> None:
    def f(n: Literal[1, 2, 3], flag: Literal[True]) -> str:
        """F."""
        return ""

    p = props(f)
    assert p["n"] == {"type": "integer", "enum": [1, 2, 3]}
    assert p["flag"] == {"type": "boolean", "enum": [True]}


def test_arguments_heading_and_keyword_only_parameters() -> None:
    def f(*, a: str) -> str:
        """Do it.

        Arguments:
            a: the thing.
        """
        return ""

    t = tool_from_function(f, name="renamed")
    assert t.name == "renamed"
    assert t.parameters["properties"]["a"] == {"type": "string", "description": "the thing."}
    assert t.parameters["required"] == ["a"]


def test_no_docstring_gives_an_empty_description() -> None:
    def f(a: str) -> str:
        return a

    t = tool_from_function(f)
    assert t.description == ""
    assert "description" not in t.parameters["properties"]["a"]


def test_a_method_skips_self_and_stays_callable() -> None:
    class Room:
        @tool(timeout_s=1.5, max_output_chars=50, name="go")
        def move(self, to: str) -> str:
            """Walk."""
            return f"at {to}"

    room = Room()
    assert room.move("hall") == "at hall"  # the decorator returns the function unchanged
    t = as_tool(room.move)
    assert (t.name, t.timeout_s, t.max_output_chars) == ("go", 1.5, 50)
    assert list(t.parameters["properties"]) == ["to"]
    assert t.fn("attic") == "at attic"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def f(a) -> str: ...", "missing type annotation"),
        ("def f(a: tuple[int, int]) -> str: ...", "unsupported annotation"),
        ("def f(a: set[int]) -> str: ...", "unsupported annotation"),
        ("def f(a: Any) -> str: ...", "unsupported annotation"),
        ("def f(a: list) -> str: ...", "unsupported annotation"),
        ("def f(a: list[set]) -> str: ...", "(list item)"),
        ("def f(a: dict[int, str]) -> str: ...", "keys must be str"),
        ("def f(a: dict[str, Any]) -> str: ...", "(dict value)"),
        ("def f(a: int | Any) -> str: ...", "unsupported annotation"),
        ("def f(a: Literal[None]) -> str: ...", "Literal values"),
        ("def f(a: Literal[b'x']) -> str: ...", "Literal values"),
        ("def f(*args: int) -> str: ...", "only named parameters"),
        ("def f(**kwargs: int) -> str: ...", "only named parameters"),
        ("def f(a: int, /) -> str: ...", "only named parameters"),
        ("def f(a: 'NoSuchName') -> str: ...", "could not resolve"),
    ],
)
def test_bad_signatures_fail_at_decoration_time(source: str, fragment: str) -> None:
    namespace: dict[str, Any] = {"Any": Any, "Literal": Literal}
    exec(source, namespace)
    with pytest.raises(TypeError, match="'f'") as err:
        tool(namespace["f"])
    assert fragment in str(err.value)
    with pytest.raises(TypeError):
        tool(timeout_s=1.0)(namespace["f"])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "1abc"}, "name"),
        ({"description": None}, "description"),
        ({"fn": "not callable"}, "fn"),
        ({"timeout_s": -1.0}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"timeout_s": True}, "timeout_s"),
        ({"timeout_s": "1"}, "timeout_s"),
        ({"max_output_chars": 0}, "max_output_chars"),
        ({"max_output_chars": True}, "max_output_chars"),
        ({"max_output_chars": 2.5}, "max_output_chars"),
        ({"parameters": []}, "parameters"),
        ({"parameters": {"type": "array"}}, "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"type": "object", "properties": {}}}}}, "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"type": "object", "additionalProperties": 1}}}},
         "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"type": "tuple"}}}}, "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"enum": [[1]]}}}}, "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "x"}]}}}},
         "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"type": "array"}}}}, "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"type": "string", "enum": []}}}}, "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"type": "string", "enum": [1]}}}}, "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a-b": {"type": "string"}}}}, "parameters"),
        ({"parameters": {**OBJECT, "properties": {"a": {"anyOf": [{"type": "string"}]}}}}, "parameters"),
        ({"parameters": {**OBJECT, "required": ["ghost"]}}, "parameters"),
        ({"parameters": {**OBJECT, "additionalProperties": True}}, "parameters"),
    ],
)
def test_tool_record_validation(kwargs: dict[str, Any], field: str) -> None:
    args = {"name": "ok", "description": "", "parameters": OBJECT, "fn": lambda: ""} | kwargs
    with pytest.raises(ValueError, match=f"^{field}:"):
        Tool(**args)


def test_valid_tool_record_and_zero_timeout() -> None:
    t = Tool("my-tool_2", "d", OBJECT, lambda: "", timeout_s=0, max_output_chars=1)
    assert t.timeout_s == 0
    assert as_tool(t) is t
    with pytest.raises(ValueError, match="@tool-marked"):
        as_tool(lambda: "")


# ---- parsing ----------------------------------------------------------------------------------------


def test_format_round_trips_through_parse() -> None:
    text = format_tool_call("move", {"to": "hall", "steps": 2, "fast": True, "via": ["a", "b"], "x": None})
    assert text.startswith(OPEN_TAG + "\n") and text.endswith("\n" + CLOSE_TAG)
    parsed = parse_tool_calls(text)
    assert parsed == ParsedAction("", (ToolCall("move", {"to": "hall", "steps": 2, "fast": True,
                                                         "via": ["a", "b"], "x": None}),), ())
    assert not parsed.is_final_answer


def test_several_calls_per_turn_and_content_outside_blocks_is_kept() -> None:
    text = (
        "I will look first.\n"
        + format_tool_call("look", {})
        + "\nthen move "
        + '<tool_call>{"name": " move ", "arguments": {"to": "hall"}}</tool_call>'
        + " done."
    )
    parsed = parse_tool_calls(text)
    assert parsed.calls == (ToolCall("look", {}), ToolCall("move", {"to": "hall"}))  # name stripped
    assert parsed.errors == ()
    assert parsed.content == "I will look first.\n\nthen move  done."
    assert not parsed.is_final_answer


def test_missing_arguments_means_no_arguments() -> None:
    assert parse_tool_calls('<tool_call>{"name": "look"}</tool_call>').calls == (ToolCall("look", {}),)


def test_a_turn_without_a_call_is_a_final_answer() -> None:
    parsed = parse_tool_calls("  The answer is 42.\n")
    assert parsed == ParsedAction("The answer is 42.", (), ())
    assert parsed.is_final_answer
    assert parse_tool_calls("").is_final_answer


def test_a_malformed_block_is_not_a_final_answer() -> None:
    parsed = parse_tool_calls("text <tool_call>nope</tool_call>")
    assert parsed.calls == () and len(parsed.errors) == 1
    assert not parsed.is_final_answer


def test_non_str_input_is_an_error_not_an_exception() -> None:
    parsed = parse_tool_calls(None)  # type: ignore[arg-type]
    assert parsed.calls == ()
    assert parsed.errors[0].startswith("Error:") and "NoneType" in parsed.errors[0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<tool_call>{not json}</tool_call>", "invalid JSON"),
        ("<tool_call></tool_call>", "invalid JSON"),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", "invalid JSON"),
        ("<tool_call>" + "1" * 5000 + "</tool_call>", "invalid JSON"),
        ('<tool_call>["move"]</tool_call>', "expected a JSON object, got list"),
        ("<tool_call>3</tool_call>", "expected a JSON object, got integer"),
        ('<tool_call>"move"</tool_call>', "expected a JSON object, got string"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'missing "name"'),
        ('<tool_call>{"name": "  "}</tool_call>', 'missing "name"'),
        ('<tool_call>{"name": 3}</tool_call>', 'missing "name"'),
        (
            '<tool_call>{"name": "a", "arguments": [1]}</tool_call>',
            '"arguments" must be a JSON object, got list',
        ),
        (
            '<tool_call>{"name": "a", "arguments": "{}"}</tool_call>',
            '"arguments" must be a JSON object, got string',
        ),
        ('<tool_call>{"name": "a", "arguments": {}}', "never closed"),
        ('{"name": "a"}</tool_call>', "without a <tool_call> before it"),
    ],
)
def test_each_malformed_block_is_an_error_naming_the_problem(text: str, fragment: str) -> None:
    parsed = parse_tool_calls(text)
    assert parsed.calls == ()
    assert len(parsed.errors) == 1
    assert parsed.errors[0].startswith("Error: could not parse tool call:")
    assert fragment in parsed.errors[0]
    assert "<tool_call>{" in parsed.errors[0]  # the format hint tells the model what to write instead


def test_good_and_bad_blocks_mix_in_order() -> None:
    text = (
        format_tool_call("a", {"n": 1})
        + "<tool_call>oops</tool_call>"
        + format_tool_call("b", {})
        + "</tool_call> tail <tool_call>{"
    )
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.calls] == ["a", "b"]
    assert len(parsed.errors) == 3
    assert "invalid JSON" in parsed.errors[0]
    assert "without a" in parsed.errors[1]
    assert "never closed" in parsed.errors[2]
    assert parsed.content == "tail"  # the stray close tag is dropped, the unclosed block's text too


def test_an_argument_holding_the_close_tag_round_trips() -> None:
    arguments = {"note": f"see {CLOSE_TAG} and {OPEN_TAG} and </"}
    assert parse_tool_calls(format_tool_call("write", arguments)).calls == (ToolCall("write", arguments),)


# ---- parsing: fuzzing -------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [OPEN_TAG, CLOSE_TAG, "<tool_call", "tool_call>", "</", "{", "}", "[", "]", '"name"', '"arguments"',
     ":", ",", '"', "\\", " ", "\n", "null", "1e999", "-", '{"name": "a"}', '{"name": "a", "arguments": {}}',
     '{"name": 1}', '"x"', "[1, 2]"]
)
# strings that often hold the tags, so the fuzzers meet them inside JSON strings too
TEXTS = st.text() | st.lists(FRAGMENTS | st.text(max_size=3), max_size=6).map("".join)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | FLOATS | TEXTS
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXTS, inner, max_size=4),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(TEXTS, JSON_VALUES, max_size=5)
TOOL_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", fullmatch=True)
STITCHED = st.lists(FRAGMENTS | st.text(max_size=6) | JSON_VALUES.map(json.dumps), max_size=25).map("".join)


def check_parsed(text: str, parsed: ParsedAction) -> None:
    """What holds for every parse: the types, the error prefix, and when a turn is a final answer."""
    assert isinstance(parsed, ParsedAction)
    assert isinstance(parsed.content, str) and parsed.content == parsed.content.strip()
    assert all(isinstance(c, ToolCall) and isinstance(c.arguments, dict) for c in parsed.calls)
    assert all(c.name and c.name == c.name.strip() for c in parsed.calls)
    assert all(isinstance(e, str) and e.startswith("Error:") for e in parsed.errors)
    assert parsed.is_final_answer == (OPEN_TAG not in text and CLOSE_TAG not in text)


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_parse_never_raises_on_any_text(text: str) -> None:
    check_parsed(text, parse_tool_calls(text))


@settings(max_examples=300, deadline=None)
@given(text=STITCHED)
def test_parse_never_raises_on_stitched_fragments(text: str) -> None:
    check_parsed(text, parse_tool_calls(text))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def block(body: str) -> str:
    return f"{OPEN_TAG}{body}{CLOSE_TAG}"


def dumps(value: Any) -> str:
    """JSON text that cannot hold the close tag ("\\/" is JSON's escape for "/")."""
    return json.dumps(value).replace("</", "<\\/")


def one_error(text: str) -> str:
    parsed = parse_tool_calls(text)
    assert parsed.calls == () and len(parsed.errors) == 1, parsed
    assert parsed.errors[0].startswith("Error:")
    return parsed.errors[0]


@settings(max_examples=200, deadline=None)
@given(body=(st.text() | STITCHED).filter(lambda s: CLOSE_TAG not in s and not _is_json(s)))
def test_fuzz_invalid_json_is_named(body: str) -> None:
    assert "invalid JSON" in one_error(block(body))


@settings(max_examples=100, deadline=None)
@given(value=JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
def test_fuzz_a_non_object_is_named(value: Any) -> None:
    assert "expected a JSON object" in one_error(block(dumps(value)))


@settings(max_examples=100, deadline=None)
@given(obj=JSON_OBJECTS.map(lambda d: {k: v for k, v in d.items() if k != "name"}),
       name=st.none() | st.just(" ") | st.integers() | st.lists(st.text(), max_size=2) | st.just(False),
       with_name=st.booleans())
def test_fuzz_a_missing_or_bad_name_is_named(obj: dict[str, Any], name: Any, with_name: bool) -> None:
    assert 'missing "name"' in one_error(block(dumps(obj | {"name": name} if with_name else obj)))


@settings(max_examples=100, deadline=None)
@given(name=TOOL_NAMES, arguments=JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
def test_fuzz_non_object_arguments_are_named(name: str, arguments: Any) -> None:
    body = dumps({"name": name, "arguments": arguments})
    assert '"arguments" must be a JSON object' in one_error(block(body))


@settings(max_examples=100, deadline=None)
@given(before=st.text().filter(lambda s: OPEN_TAG not in s and CLOSE_TAG not in s),
       after=st.text().filter(lambda s: CLOSE_TAG not in s))
def test_fuzz_an_unclosed_tag_and_a_stray_close_tag_are_named(before: str, after: str) -> None:
    assert "never closed" in one_error(before + OPEN_TAG + after)
    if OPEN_TAG not in after:
        assert "without a" in one_error(before + CLOSE_TAG + after)


@settings(max_examples=300, deadline=None)
@given(name=TOOL_NAMES, arguments=JSON_OBJECTS, before=st.text(), after=st.text())
def test_fuzz_format_then_parse_gives_back_the_call(
    name: str, arguments: dict[str, Any], before: str, after: str
) -> None:
    expected = ParsedAction("", (ToolCall(name, arguments),))
    assert parse_tool_calls(format_tool_call(name, arguments)) == expected
    # text around it, free of tags, is the content; the call still comes back
    if not any(tag in s for tag in (OPEN_TAG, CLOSE_TAG) for s in (before, after)):
        parsed = parse_tool_calls(before + format_tool_call(name, arguments) + after)
        assert parsed.calls == (ToolCall(name, arguments),) and parsed.errors == ()
        assert parsed.content == (before + after).strip()


# ---- ToolBox ----------------------------------------------------------------------------------------


@tool(timeout_s=None)
def add(a: int, b: float = 0.5) -> str:
    """Add two numbers and report the type of ``b``."""
    return f"{a + b} {type(b).__name__}"


@tool(timeout_s=None)
def paint(colour: Literal["red", "green"], xs: list[int] | None = None) -> str:
    """Paint."""
    return colour


@tool(timeout_s=None)
def total(xs: list[int]) -> int:
    """Sum."""
    return sum(xs)


@tool(timeout_s=None)
def flags(on: bool, maybe: float | None = None) -> str:
    """Flags."""
    return f"{on} {maybe!r}"


@tool(timeout_s=None)
def fail(message: str = "") -> str:
    """Raise."""
    raise ValueError(message)


@tool(timeout_s=1.0)
def fail_on_worker(message: str = "") -> str:
    """Raise on the worker thread."""
    raise KeyError(message) if message else ValueError()


@tool(timeout_s=None, max_output_chars=10)
def shout(n: int) -> str:
    """Long output."""
    return "x" * n


@tool(timeout_s=None)
def give(kind: str) -> Any:
    """Return something that is not a str."""
    return {"dict": {"a": [1, 2.5, None], "ü": True}, "list": [1, "two"], "int": 7, "none": None,
            "set": {3}}[kind]


@tool(timeout_s=1.0)
def where() -> str:
    """The name and id of the thread the call runs on."""
    t = threading.current_thread()
    return f"{t.name} {t.ident}"


@tool(timeout_s=None)
def where_inline() -> str:
    """The thread, inline."""
    return threading.current_thread().name


BOX = ToolBox([add, total, paint, flags, fail, fail_on_worker, shout, give, where, where_inline])


def run(name: str, **arguments: Any) -> ToolResult:
    return BOX.call(ToolCall(name, arguments))


def test_a_good_call_runs_and_coerces_int_to_float() -> None:
    assert run("add", a=2, b=3) == ToolResult("add", "5.0 float")  # a JSON int is fine for a float
    assert run("add", a=2) == ToolResult("add", "2.5 float")
    assert run("add", a=1, b=0.25).content == "1.25 float"
    assert run("flags", on=True, maybe=2).content == "True 2.0"  # coerced inside X | None too
    assert run("flags", on=False, maybe=None).content == "False None"


def test_unknown_tool_lists_the_available_ones() -> None:
    r = run("fly", to="moon")
    assert r.error and r.name == "fly"
    assert r.content.startswith("Error: unknown tool 'fly'.")
    known = "add, fail, fail_on_worker, flags, give, paint, shout, total, where, where_inline"
    assert r.content.endswith(f"Available tools: {known}.")
    empty = ToolBox([]).call(ToolCall("fly", {}))
    assert empty.error and "(none: answer in plain text)" in empty.content


@pytest.mark.parametrize(
    ("name", "arguments", "fragments"),
    [
        ("add", {}, ["missing required argument 'a'", "Expected add(a: an integer, b?: a number)"]),
        ("add", {"a": 1, "c": 2}, ["got unexpected argument 'c'"]),
        ("add", {"a": "3"}, ["argument 'a' must be an integer, got string \"3\""]),
        ("add", {"a": True}, ["argument 'a' must be an integer, got boolean true"]),  # bool is not an int
        ("add", {"a": 1.0}, ["argument 'a' must be an integer, got number 1.0"]),
        ("add", {"a": 1, "b": False}, ["argument 'b' must be a number, got boolean false"]),
        ("add", {"a": None}, ["argument 'a' must be an integer, got null"]),
        ("flags", {"on": 1}, ["argument 'on' must be a boolean, got integer 1"]),
        ("flags", {"on": True, "maybe": "x"}, ["argument 'maybe' must be a number or null, got string"]),
        ("paint", {"colour": "blue"}, ["'colour' must be one of \"red\", \"green\", got string \"blue\""]),
        ("paint", {"colour": 1}, ["argument 'colour' must be one of"]),
        ("total", {"xs": [1, "2"]}, ["argument 'xs[1]' must be an integer, got string \"2\""]),
        ("total", {"xs": {"a": 1}}, ["'xs' must be a list whose items are each an integer, got object"]),
        ("paint", {"colour": "red", "xs": [1, "2"]}, ["argument 'xs' must be a list whose items are each"]),
        ("add", {"a": "x" * 100}, ['"' + "x" * 56 + "..."]),  # a long value is shortened
    ],
)
def test_bad_arguments_are_named(name: str, arguments: dict[str, Any], fragments: list[str]) -> None:
    r = run(name, **arguments)
    assert r.error and r.name == name
    assert r.content.startswith(f"Error: tool '{name}' ")
    assert "Expected " + name + "(" in r.content
    for fragment in fragments:
        assert fragment in r.content


def test_every_problem_is_listed_at_once() -> None:
    r = run("add", b="no", c=1)
    assert r.error
    assert "called with bad arguments:" in r.content
    assert "missing required argument 'a'" in r.content
    assert "unexpected argument 'c'" in r.content
    assert "argument 'b' must be a number" in r.content


def test_arguments_that_are_not_an_object() -> None:
    r = BOX.call(ToolCall("add", [1, 2]))  # type: ignore[arg-type]
    assert r.error and "arguments must be a JSON object, got list" in r.content


@pytest.mark.parametrize("name", ["fail", "fail_on_worker"])
def test_a_raising_tool_is_an_error_result(name: str) -> None:
    r = run(name, message="disk on fire")
    assert r.error
    kind = "ValueError" if name == "fail" else "KeyError"
    assert r.content.startswith(f"Error: tool '{name}' raised {kind}: ")
    assert "disk on fire" in r.content
    bare = run(name)
    assert bare.error and bare.content == f"Error: tool '{name}' raised ValueError."


def test_long_output_is_truncated_with_a_marker_not_an_error() -> None:
    r = run("shout", n=25)
    assert r == ToolResult("shout", "x" * 10 + "\n[... truncated 15 chars]", False)
    assert run("shout", n=10).content == "x" * 10  # at the limit: untouched
    assert truncate("abc", 3) == "abc" and truncate("abcd", 3) == "abc\n[... truncated 1 chars]"


def test_non_str_return_values_are_json_rendered() -> None:
    assert json.loads(run("give", kind="dict").content) == {"a": [1, 2.5, None], "ü": True}
    assert "ü" in run("give", kind="dict").content  # not \u-escaped
    assert run("give", kind="list").content == '[1, "two"]'
    assert run("give", kind="int").content == "7"
    assert run("give", kind="none").content == "null"
    assert run("give", kind="set").content == "{3}"  # not JSON: str() as a fallback
    assert not run("give", kind="set").error
    assert render_output(list(range(100)), 5) == "[0, 1\n[... truncated 385 chars]"


def test_duplicate_names_and_unmarked_functions_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"duplicate tool names \['add'\]"):
        ToolBox([add, add])
    with pytest.raises(ValueError, match="@tool-marked"):
        ToolBox([len])


def test_inline_and_worker_threads() -> None:
    assert run("where_inline").content == threading.current_thread().name  # timeout_s=None runs inline
    box = ToolBox([Tool("zero", "", OBJECT, lambda: threading.current_thread().name, timeout_s=0)])
    assert box.call(ToolCall("zero", {})).content == threading.current_thread().name
    first, second = run("where").content, run("where").content
    assert first.startswith("agentrl-tool-worker ")
    assert first == second  # one reusable worker, not a thread per call


# ---- time limits ------------------------------------------------------------------------------------


def test_a_call_past_its_limit_is_abandoned_and_the_next_call_works() -> None:
    release = threading.Event()
    effects: list[str] = []

    @tool(timeout_s=0.2)
    def hang(tag: str) -> str:
        """Block until released."""
        release.wait(5)  # stands in for time.sleep(5), but lets the test free the thread at the end
        effects.append(tag)
        return "late"

    box = ToolBox([hang, where])
    try:
        worker_before = box.call(ToolCall("where", {})).content
        start = time.monotonic()
        r = box.call(ToolCall("hang", {"tag": "first"}))
        elapsed = time.monotonic() - start
        assert elapsed < 0.2 + 0.5
        assert elapsed >= 0.2
        assert r.error and r.name == "hang"
        assert r.content == (
            "Error: tool 'hang' timed out after 0.2 s and was abandoned; its effects, if any, are unknown."
        )
        assert box.num_timeouts == 1
        # the next call gets a fresh worker and runs normally
        start = time.monotonic()
        after = box.call(ToolCall("where", {}))
        assert time.monotonic() - start < 0.5
        assert after.error is False and after.content.startswith("agentrl-tool-worker ")
        assert after.content != worker_before  # not the thread still stuck in hang
        r2 = box.call(ToolCall("hang", {"tag": "second"}))  # a second hang times out too
        assert r2.error and box.num_timeouts == 2
    finally:
        release.set()
    deadline = time.monotonic() + 2
    while len(effects) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(effects) == ["first", "second"]  # abandoned, not killed: the calls finished later
    assert box.call(ToolCall("hang", {"tag": "third"})) == ToolResult("hang", "late")


def test_inline_tools_have_no_limit() -> None:
    @tool(timeout_s=None)
    def nap() -> str:
        """Sleep a little past what a limit would allow."""
        time.sleep(0.3)
        return "rested"

    box = ToolBox([nap])
    assert box.call(ToolCall("nap", {})) == ToolResult("nap", "rested")
    assert box.num_timeouts == 0
