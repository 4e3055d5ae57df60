"""Tools: typed Python functions the model calls, their JSON schemas, and tool calls parsed from text.

A user writes a tool as a typed function (or a method of a ``ToolEnv``) with a docstring::

    @tool(timeout_s=2.0)
    def move(to: str, steps: int = 1) -> str:
        '''Walk to an adjacent room.

        Args:
            to: the room to walk to.
            steps: how many rooms to walk.
        '''

Its JSON schema comes from the signature: ``str``, ``int``, ``float``, ``bool``, ``list[X]``,
``dict[str, X]``, ``Literal[...]``, unions ``X | Y`` and ``X | None`` (``Optional[X]``); the table of
schemas and the validation rules are in ``agentrl.tool_schema``. A parameter with a default is not
required. The description is the docstring's first paragraph and each parameter's description comes
from a Google-style ``Args:`` section. A missing or unsupported annotation is a TypeError at decoration
time.

The model calls tools in the Qwen/Hermes format, one or several blocks per turn::

    <tool_call>{"name": "move", "arguments": {"to": "hall"}}</tool_call>

``parse_tool_calls`` never raises: every malformed block becomes an error string. ``ToolBox.call`` never
raises either: an unknown tool, missing/unexpected/mistyped arguments, a tool that raises and a tool that
runs past its time limit all come back as a ``ToolResult`` with ``error=True`` and a message the model can
read; output over the length limit is truncated with a marker (not an error).

Time limits. Tools are often methods that mutate their environment, so they cannot run in another
process. A call with a positive ``timeout_s`` runs on the ToolBox's worker thread (one reusable daemon
thread, so a fast call costs tens of microseconds, not a thread start) while the caller waits at most
``timeout_s``. A call past its limit is **abandoned, not killed**: Python cannot stop a thread, so the
call may still finish later and touch the environment's state. The ToolBox hands that worker its last job
and starts a fresh worker for the next call; the model is told the call timed out, and the environment
should treat its state as possibly touched by it. ``timeout_s=None`` (or 0) runs the call inline, with
no limit and no thread. A ToolBox is meant to be driven by one thread at a time.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.textsafety import describe_exception, safe_str
from agentrl.tool_schema import (
    annotation_schema,
    argument_problems,
    coerce,
    describe_schema,
    is_json,
    json_type_word,
    schema_problems,
)
from agentrl.types import ToolCall
from agentrl.worker_thread import WorkerThread

FORMAT_HINT = 'Write <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"
TIMEOUT_MARGIN_S = 0.05  # documented slack between a tool's limit and the caller getting control back
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_MARK = "__agentrl_tool__"  # attribute set on functions decorated with @tool


# ---- the Tool record --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """A callable the model may call, with the JSON schema of its keyword arguments.

    Attributes:
        name: what the model writes in ``"name"``; letters, digits, ``_`` and ``-``, at most 64 chars.
        description: what the tool does, shown to the model.
        parameters: a JSON schema object ``{"type": "object", "properties": {...}, "required": [...],
            "additionalProperties": False}`` using only the kinds this module supports (see module doc).
        fn: called with the validated arguments as keywords.
        timeout_s: seconds before the call is abandoned; None or 0 runs it inline with no limit.
        max_output_chars: longer output is truncated with a marker naming how many chars were dropped.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    timeout_s: float | None = 5.0
    max_output_chars: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"name: expected letters, digits, '_' or '-' (1-64 chars), got {self.name!r}")
        if not isinstance(self.description, str):
            raise ValueError(f"description: expected str, got {type(self.description).__name__}")
        if not callable(self.fn):
            raise ValueError(f"fn: tool {self.name!r} needs a callable, got {type(self.fn).__name__}")
        if self.timeout_s is not None and (
            isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int | float)
            or not math.isfinite(self.timeout_s) or self.timeout_s < 0
        ):
            raise ValueError(f"timeout_s: expected None or a finite number >= 0, got {self.timeout_s!r}")
        if isinstance(self.max_output_chars, bool) or not isinstance(self.max_output_chars, int) or (
            self.max_output_chars < 1
        ):
            raise ValueError(f"max_output_chars: expected an int >= 1, got {self.max_output_chars!r}")
        problems = schema_problems(self.parameters)
        if problems:
            raise ValueError(f"parameters: tool {self.name!r} has an invalid schema: {'; '.join(problems)}")

    def schema(self) -> dict[str, Any]:
        """The function schema in the form chat templates take (``tools=[...]``)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


# ---- JSON schema from type hints --------------------------------------------------------------------


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The first paragraph of a docstring, and the per-parameter texts of its ``Args:`` section."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip():
            break
        first.append(line.strip())
    args: dict[str, str] = {}
    start = next((i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:")), None)
    if start is None:
        return " ".join(first), args
    indent, current = None, None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:  # the next section (Returns:, Raises:, ...) ends Args
            break
        indent = depth if indent is None else indent
        m = re.match(r"^\*{0,2}([A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line.strip())
        if depth == indent and m:
            current = m.group(1)
            args[current] = m.group(2).strip()
        elif current is not None and depth > indent:
            args[current] = f"{args[current]} {line.strip()}".strip()
    return " ".join(first), args


def _signature_schema(fn: Callable[..., Any], tool_name: str) -> tuple[dict[str, Any], str]:
    """The parameters schema and description of ``fn``; a leading ``self`` is skipped (a method)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # an annotation that does not resolve is a decoration-time error
        raise TypeError(f"tool {tool_name!r}: could not resolve its type hints ({e})") from e
    description, arg_docs = _parse_docstring(inspect.getdoc(fn))
    params = list(inspect.signature(fn).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in params:
        where = f"tool {tool_name!r} parameter {p.name!r}"
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"{where}: only named parameters are supported (no *args, **kwargs or /)")
        if p.name not in hints:
            raise TypeError(f"{where}: missing type annotation")
        prop = annotation_schema(hints[p.name], where)
        if p.name in arg_docs:
            prop["description"] = arg_docs[p.name]
        if p.default is p.empty:
            required.append(p.name)
        elif is_json(p.default):
            prop["default"] = p.default
        properties[p.name] = prop
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return schema, description


def tool_from_function(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    timeout_s: float | None = 5.0,
    max_output_chars: int = 2000,
) -> Tool:
    """Build a ``Tool`` from a typed function (or bound method) and its docstring.

    The schema comes from the type hints, the description from the docstring's first paragraph and the
    parameter descriptions from its ``Args:`` section. Raises TypeError naming the parameter for a
    missing or unsupported annotation. It ignores the options ``@tool`` recorded (``as_tool`` honours
    them).
    """
    tool_name = name or getattr(fn, "__name__", "")
    schema, description = _signature_schema(fn, tool_name)
    return Tool(tool_name, description, schema, fn, timeout_s, max_output_chars)


@dataclass(frozen=True)
class _ToolSpec:
    """The options ``@tool`` records on a function; ``ToolEnv`` reads them to bind its methods."""

    name: str
    timeout_s: float | None
    max_output_chars: int


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout_s: float | None = 5.0,
    max_output_chars: int = 2000,
) -> Any:
    """Mark a function or method as a tool; usable bare (``@tool``) or with options (``@tool(timeout_s=1)``).

    The function is returned unchanged (still callable as before) with its tool options attached; the
    schema is built now, so a bad annotation fails at decoration time with a TypeError. ``ToolEnv``
    binds marked methods to its instance; a marked plain function can be passed to ``ToolBox`` as is
    or turned into a ``Tool`` with ``as_tool``. A first parameter named ``self`` marks a method.
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        tool_name = name or f.__name__
        tool_from_function(f, name=tool_name, timeout_s=timeout_s, max_output_chars=max_output_chars)
        setattr(f, _MARK, _ToolSpec(tool_name, timeout_s, max_output_chars))
        return f

    return mark if fn is None else mark(fn)


def tool_spec(fn: Any) -> _ToolSpec | None:
    """The options ``@tool`` attached to ``fn`` (None if it is not marked)."""
    spec = getattr(fn, _MARK, None)
    return spec if isinstance(spec, _ToolSpec) else None


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    """A ``Tool`` as is; a ``@tool``-marked function (or bound method) turned into its ``Tool``."""
    if isinstance(obj, Tool):
        return obj
    spec = tool_spec(obj)
    if spec is None:
        raise ValueError(f"tools: expected a Tool or a @tool-marked function, got {obj!r}")
    return tool_from_function(
        obj, name=spec.name, timeout_s=spec.timeout_s, max_output_chars=spec.max_output_chars
    )


def _usage(t: Tool) -> str:
    """``move(to: a string, steps?: an integer)``: the call shape, for error messages."""
    props, required = t.parameters.get("properties", {}), set(t.parameters.get("required", []))
    parts = [f"{k}{'' if k in required else '?'}: {describe_schema(p)}" for k, p in props.items()]
    return f"{t.name}({', '.join(parts)})"


# ---- formatting and parsing tool calls --------------------------------------------------------------


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One call in the Qwen/Hermes format, on three lines.

    ``<tool_call>``, then ``{"name": ..., "arguments": {...}}`` (``json.dumps``), then ``</tool_call>``.
    ``</`` inside a JSON string is written ``<\\/`` (the same string to JSON), so an argument holding
    ``</tool_call>`` cannot close the block early.
    """
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    body = body.replace("</", "<\\/")  # "<" only occurs inside strings, where "\/" means "/"
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"


@dataclass(frozen=True)
class ParsedAction:
    """One assistant turn split into its text, its well-formed tool calls and its malformed blocks.

    Attributes:
        content: the text outside the tool-call blocks, stripped.
        calls: the well-formed calls, in order.
        errors: one readable error per malformed block (starting with ``Error:``), in order.
    """

    content: str
    calls: tuple[ToolCall, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def is_final_answer(self) -> bool:
        """True when the turn has no tool-call block at all, well-formed or not."""
        return not self.calls and not self.errors


def _parse_error(what: str) -> str:
    return f"Error: could not parse tool call: {what}. {FORMAT_HINT}"


def _parse_block(body: str) -> ToolCall | str:
    """One ``<tool_call>`` block body -> a ToolCall, or the error string saying what is wrong."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return _parse_error(f"invalid JSON ({e.msg} at char {e.pos})")
    except (ValueError, RecursionError) as e:  # e.g. an int too long to convert, or absurd nesting
        return _parse_error(f"invalid JSON ({type(e).__name__})")
    if not isinstance(obj, dict):
        return _parse_error(f"expected a JSON object, got {json_type_word(obj)}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return _parse_error('missing "name" (a non-empty string)')
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        return _parse_error(f'"arguments" must be a JSON object, got {json_type_word(arguments)}')
    return ToolCall(name=name.strip(), arguments=arguments)


def parse_tool_calls(text: str) -> ParsedAction:
    """Split ``text`` into its content and its ``<tool_call>`` blocks; never raises for any string.

    Each block that is not valid JSON, not an object, lacks ``"name"`` or has non-object
    ``"arguments"`` becomes one error naming what was wrong; so do an unclosed ``<tool_call>`` and a
    stray ``</tool_call>``. A missing ``"arguments"`` means no arguments.
    """
    if not isinstance(text, str):
        return ParsedAction("", (), (_parse_error(f"expected text, got {type(text).__name__}"),))
    content: list[str] = []
    calls: list[ToolCall] = []
    errors: list[str] = []
    pos = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        before = text[pos:] if start < 0 else text[pos:start]
        if CLOSE_TAG in before:
            errors.append(_parse_error(f"found {CLOSE_TAG} without a {OPEN_TAG} before it"))
            before = before.replace(CLOSE_TAG, "")
        content.append(before)
        if start < 0:
            break
        end = text.find(CLOSE_TAG, start + len(OPEN_TAG))
        if end < 0:
            errors.append(_parse_error(f"{OPEN_TAG} is never closed with {CLOSE_TAG}"))
            break
        parsed = _parse_block(text[start + len(OPEN_TAG) : end])
        (calls if isinstance(parsed, ToolCall) else errors).append(parsed)  # type: ignore[arg-type]
        pos = end + len(CLOSE_TAG)
    return ParsedAction("".join(content).strip(), tuple(calls), tuple(errors))


# ---- running calls ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolResult:
    """What one call gave back: the tool's name, the text the model sees, and whether it failed."""

    name: str
    content: str
    error: bool = False


def render_output(value: Any, max_chars: int) -> str:
    """A tool's return value as text: str as is, else ``json.dumps`` (``str`` as a fallback), truncated."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = str(value)
    return truncate(text, max_chars)


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` with a marker naming how many characters were dropped."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[... truncated {len(text) - max_chars} chars]"


class ToolBox:
    """Runs tool calls by name, turning every failure into a readable ``ToolResult``.

    Accepts ``Tool`` records or ``@tool``-marked functions. ``call`` never raises; see the module
    docstring for how time limits work (a timed-out call is abandoned, not killed).
    """

    def __init__(self, tools: Sequence[Tool | Callable[..., Any]]) -> None:
        built = [as_tool(t) for t in tools]
        names = [t.name for t in built]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tools: duplicate tool names {dupes}")
        self.tools: dict[str, Tool] = {t.name: t for t in built}
        self._worker: WorkerThread | None = None
        self.num_timeouts = 0

    def call(self, call: ToolCall) -> ToolResult:
        """Validate ``call`` against its tool's schema and run it; every failure is an error result."""
        name = call.name if isinstance(call.name, str) else repr(call.name)
        t = self.tools.get(name)
        if t is None:
            known = ", ".join(sorted(self.tools)) or "(none: answer in plain text)"
            message = f"Error: unknown tool '{name}'. Available tools: {known}."
            return ToolResult(name, truncate(message, 2000), True)
        problems = argument_problems(t.parameters, call.arguments)
        if problems:
            joined = "; ".join(problems)
            detail = problems[0] if len(problems) == 1 else f"called with bad arguments: {joined}"
            message = f"Error: tool '{name}' {detail}. Expected {_usage(t)}."
            return ToolResult(name, truncate(message, t.max_output_chars), True)
        props = t.parameters.get("properties", {})
        kwargs = {k: coerce(v, props[k]) for k, v in call.arguments.items()}
        if not t.timeout_s:
            try:
                value = t.fn(**kwargs)
            except Exception as e:  # noqa: BLE001 - a raising tool is a model-visible error
                return self._raised(t, e)
            return self._rendered(t, value)
        return self._call_with_limit(t, kwargs)

    def _call_with_limit(self, t: Tool, kwargs: dict[str, Any]) -> ToolResult:
        if self._worker is None:
            self._worker = WorkerThread("agentrl-tool-worker")
        job = self._worker.run(functools.partial(t.fn, **kwargs), t.timeout_s)
        if job is None:
            self._worker.retire()  # the hung call keeps that thread; the next call gets a fresh one
            self._worker = None
            self.num_timeouts += 1
            message = (
                f"Error: tool '{t.name}' timed out after {t.timeout_s:g} s and was abandoned; "
                "its effects, if any, are unknown."
            )
            return ToolResult(t.name, message, True)
        if job.exc is not None:
            return self._raised(t, job.exc)
        return self._rendered(t, job.value)

    @staticmethod
    def _rendered(t: Tool, value: Any) -> ToolResult:
        """The result of a call that returned ``value``; a value that cannot become text (its ``__str__``
        raises) is the tool's error, which the model reads, not the environment's."""
        try:
            return ToolResult(t.name, render_output(value, t.max_output_chars))
        except Exception as e:  # noqa: BLE001 - any __str__ may raise
            message = (f"Error: tool '{t.name}' returned a {type(value).__name__} that cannot be shown "
                       f"as text ({describe_exception(e)}).")
            return ToolResult(t.name, truncate(message, t.max_output_chars), True)

    @staticmethod
    def _raised(t: Tool, e: BaseException) -> ToolResult:
        detail = safe_str(e).strip()
        message = f"Error: tool '{t.name}' raised {type(e).__name__}" + (f": {detail}" if detail else ".")
        return ToolResult(t.name, truncate(message, t.max_output_chars), True)
