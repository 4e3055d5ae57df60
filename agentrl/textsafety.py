"""Making text encodable before it becomes tokens or a line of a file.

A Python ``str`` may hold code points that no UTF-8 encoder takes: lone surrogates (U+D800..U+DFFF). A
model produces one with plain ASCII, as the JSON escape ``"\\ud800"`` inside a tool call, and an
environment then echoes it back in an error message ("unknown tool '\\ud800'"); a tokenizer handed that
text raises, and so does a UTF-8 file it is written to. Every text an environment hands the runner
(task, system prompt, tool schemas, observations, digests, expert actions, info) goes through here
first: each such code point becomes U+FFFD (the replacement character), and the number replaced is
counted, so the runner can record on the episode that its text was changed (``info["text_cleaned"]``).

Text is also capped before it is tokenised (``capped``): an environment can hand back a string of any
length (a tool whose output is not limited returned 50 million characters, and tokenising it took the
process to 9.7 GB), and no context window holds more than a few characters per token of its budget. A
cut text ends with a marker saying how many characters were dropped.

Text that encodes is returned unchanged (the same object), so a well-behaved environment's token stream
is untouched. This module imports no torch.
"""

from __future__ import annotations

import re
from typing import Any

from agentrl.types import Message

REPLACEMENT = "\ufffd"
_UNENCODABLE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> tuple[str, int]:
    """``text`` with every lone surrogate replaced by U+FFFD, and how many were replaced."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _UNENCODABLE.subn(REPLACEMENT, text)
    return text, 0


def encodable_messages(messages: tuple[Message, ...]) -> tuple[tuple[Message, ...], int]:
    """The messages with encodable contents, and the number of code points replaced over all of them."""
    out, total = [], 0
    for m in messages:
        content, n = encodable(m.content)
        out.append(m if n == 0 else Message(m.role, content))
        total += n
    return tuple(out), total


def encodable_data(value: Any) -> tuple[Any, int]:
    """Plain data (str, and lists, tuples and dicts of it; keys too) with every string made encodable,
    and the number of code points replaced; other values are returned as they are."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict):
        out, total = {}, 0
        for k, v in value.items():
            k2, n1 = encodable_data(k)
            v2, n2 = encodable_data(v)
            out[k2] = v2
            total += n1 + n2
        return (value, 0) if total == 0 else (out, total)
    if isinstance(value, list | tuple):
        items = [encodable_data(v) for v in value]
        total = sum(n for _, n in items)
        if total == 0:
            return value, 0
        cleaned = [v for v, _ in items]
        return (tuple(cleaned) if isinstance(value, tuple) else cleaned), total
    return value, 0


def capped(text: str, max_chars: int) -> tuple[str, int]:
    """``text`` cut to its first ``max_chars`` characters plus a marker, and how many were dropped."""
    if len(text) <= max_chars:
        return text, 0
    dropped = len(text) - max_chars
    return f"{text[:max_chars]}\n[... cut: {dropped} more characters]", dropped


def capped_messages(messages: tuple[Message, ...], max_chars: int) -> tuple[tuple[Message, ...], int]:
    """Each message's content ``capped`` at ``max_chars``, and the characters dropped over all of them."""
    out, total = [], 0
    for m in messages:
        content, n = capped(m.content, max_chars)
        out.append(m if n == 0 else Message(m.role, content))
        total += n
    return tuple(out), total


def safe_str(value: object) -> str:
    """``str(value)``, made encodable, that never raises: a value whose ``__str__`` raises is shown as
    ``<unprintable TYPE>`` (an error message built from a model's or an environment's values must not
    become a second error)."""
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - any __str__ may raise; the message must still be written
        return f"<unprintable {type(value).__name__}>"
    return encodable(text)[0] if isinstance(text, str) else f"<unprintable {type(value).__name__}>"


def describe_exception(err: BaseException) -> str:
    """``TypeName: message`` of an exception, safe to encode and never raising."""
    return f"{type(err).__name__}: {safe_str(err)}"
