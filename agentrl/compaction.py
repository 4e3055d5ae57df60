"""Compaction: keep a long episode inside its context window by starting a new sub-trace.

docs/design.md section 5.

One config switch, ``strategy``:

- ``policy``: the policy is asked (a user message, ``summary_request``) to summarise goal, progress, state
  and next step. Its summary is sampled like any action, so its tokens are policy tokens with recorded
  log-probs at the end of the old sub-trace, trained with the episode's reward.
- ``env``: the environment's ``state_digest()`` is the summary (no tokens sampled). An environment
  without a digest (None) gets no summary, as with ``keep_last``.
- ``keep_last``: no summary; old turns are dropped.
- ``none``: no compaction; the episode is truncated (reason ``context_full``) when the window is full.

The trigger, checked before each action is sampled: the window would not fit one more maximal response,
``context_tokens + max_response_tokens > context_budget - reserve``. ``reserve`` is 0 except for
``policy``, where it is the room the summary turn needs (its request and ``max_summary_tokens``), so the
summary can always be asked for and written inside the window it summarises.

The new sub-trace starts from (``resumed_messages``): the system prompt with the tools, the original task,
the summary (a user message starting with ``SUMMARY_HEADER``), then the last ``keep_last_turns`` turns
verbatim, each turn being the assistant's action followed by its whole observation, so a tool call is
never separated from its result. These tokens are context (loss mask 0) in the new sub-trace; the action
tokens were trained where they were sampled. If the resumed context itself leaves no room for a response,
the oldest kept turns are dropped first.

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agentrl.types import Message

STRATEGIES = ("policy", "env", "keep_last", "none")
SUMMARY_HEADER = "Summary of your progress so far:"
SUMMARY_REQUEST = (
    "Context full. Summarise the goal, your progress, the facts you still need and your next step, "
    "in plain text without tool calls."
)


@dataclass(frozen=True)
class CompactionConfig:
    """How an episode that outgrows its window goes on.

    Attributes:
        strategy: ``policy``, ``env``, ``keep_last`` or ``none`` (module docstring).
        keep_last_turns: turns kept verbatim in the new window (ignored by ``none``).
        max_summary_tokens: the most tokens of a ``policy`` summary.
        summary_request: the user message that asks the policy for its summary.
    """

    strategy: str = "policy"
    keep_last_turns: int = 2
    max_summary_tokens: int = 128
    summary_request: str = SUMMARY_REQUEST

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name, lowest in (("keep_last_turns", 0), ("max_summary_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{name}: expected an int >= {lowest}, got {value!r}")
        if not isinstance(self.summary_request, str) or not self.summary_request.strip():
            raise ValueError("summary_request: expected a non-empty str")


@dataclass(frozen=True)
class Turn:
    """One turn as the conversation shows it: the action text and the observation messages after it."""

    action: str
    observation: tuple[Message, ...]


def should_compact(
    context_tokens: int, *, max_response_tokens: int, context_budget: int, reserve: int = 0
) -> bool:
    """True when the window could not hold one more maximal response (plus ``reserve``)."""
    return context_tokens + max_response_tokens > context_budget - reserve


def summary_message(summary: str) -> Message:
    """The user message that carries a summary into the new window."""
    return Message("user", f"{SUMMARY_HEADER}\n{summary.strip()}")


def resumed_messages(task: str, summary: str | None, turns: Sequence[Turn]) -> list[Message]:
    """The messages after the system prompt of a new window: task, summary (if any), then ``turns``.

    ``turns`` are the turns to keep, oldest first; each is its action as an assistant message and then
    its whole observation.
    """
    messages = [Message("user", task)]
    if summary is not None:
        messages.append(summary_message(summary))
    for turn in turns:
        messages.append(Message("assistant", turn.action))
        messages.extend(turn.observation)
    return messages
