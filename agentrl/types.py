"""The records that cross module boundaries: messages, tool calls, sub-traces and episodes.

One token-stream convention (DESIGN.md section 2): a sub-trace is one context window, a flat list of
token ids with a 0/1 ``loss_mask`` (1 = sampled by the policy), the log-probabilities recorded when
those tokens were sampled, and sparse per-token rewards. An episode is the ordered list of its
sub-traces. Everything is validated on construction, so a malformed record fails where it is made,
not three modules later inside a loss.

This module imports no torch: the environment side uses it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ROLES = ("system", "user", "assistant", "tool")
Role = Literal["system", "user", "assistant", "tool"]
EndReason = Literal["terminated", "truncated"]


@dataclass(frozen=True)
class Message:
    """One chat message; ``role`` is one of system, user, assistant, tool."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role: expected one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"content: expected str, got {type(self.content).__name__}")


@dataclass(frozen=True)
class ToolCall:
    """A parsed tool call: the tool's name and its JSON arguments."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SubTrace:
    """One context window of an episode.

    Attributes:
        token_ids: every token of the window, prompt and observations included.
        loss_mask: 1 where the policy sampled the token, 0 for prompt, template and observation tokens.
        logprobs: the sampling-time log-probability of each policy token; ``None`` at mask-0 positions.
        rewards: per-token rewards, sparse (usually one non-zero entry at the last policy token).
        summary_start: where the policy-written summary that closes this window begins (``policy``
            compaction): tokens from here to the end are that summary, all policy tokens. None when the
            window holds no summary.
        end: why the window ended: ``compaction`` (a compaction closed it and the episode went on, or
            tried to: see ``Episode.truncation_reason``), else the episode's own end, ``terminated`` or
            its truncation reason (``max_turns``, ``context_full``, ...). None in records written before
            agentrl recorded it.
    """

    token_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    logprobs: tuple[float | None, ...]
    rewards: tuple[float, ...]
    summary_start: int | None = None
    end: str | None = None

    def __post_init__(self) -> None:
        for name in ("token_ids", "loss_mask", "logprobs", "rewards"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        n = len(self.token_ids)
        for name in ("loss_mask", "logprobs", "rewards"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: length {len(getattr(self, name))} != len(token_ids) {n}")
        if n == 0:
            raise ValueError("token_ids: a sub-trace needs at least one token")
        if any(not isinstance(t, int) or t < 0 for t in self.token_ids):
            raise ValueError("token_ids: expected non-negative ints")
        if any(m not in (0, 1) for m in self.loss_mask):
            raise ValueError("loss_mask: expected only 0 and 1")
        if self.loss_mask[0] == 1:
            raise ValueError("loss_mask: token 0 is a policy token; a sub-trace starts with its prompt")
        for i, (m, lp) in enumerate(zip(self.loss_mask, self.logprobs, strict=True)):
            if m == 1 and (lp is None or not math.isfinite(lp) or lp > 0.0):
                raise ValueError(f"logprobs: policy token {i} needs a finite log-probability <= 0, got {lp}")
            if m == 0 and lp is not None:
                raise ValueError(f"logprobs: position {i} is not a policy token and must be None")
        if any(not math.isfinite(r) for r in self.rewards):
            raise ValueError("rewards: expected finite numbers")
        start = self.summary_start
        if start is not None and (
            not isinstance(start, int) or isinstance(start, bool) or not 0 < start < n
            or not all(self.loss_mask[start:])
        ):
            raise ValueError(f"summary_start: expected None or a position in (0, {n}) followed only by "
                             f"policy tokens, got {start!r}")
        if self.end is not None and (not isinstance(self.end, str) or not self.end):
            raise ValueError(f"end: expected None or a non-empty str, got {self.end!r}")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_policy_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def reward(self) -> float:
        """Sum of the per-token rewards of this window."""
        return float(sum(self.rewards))

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_ids": list(self.token_ids),
            "loss_mask": list(self.loss_mask),
            "logprobs": list(self.logprobs),
            "rewards": list(self.rewards),
            "summary_start": self.summary_start,
            "end": self.end,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubTrace:
        return cls(
            token_ids=tuple(d["token_ids"]),
            loss_mask=tuple(d["loss_mask"]),
            logprobs=tuple(d["logprobs"]),
            rewards=tuple(float(r) for r in d["rewards"]),
            summary_start=d.get("summary_start"),
            end=d.get("end"),
        )


@dataclass(frozen=True)
class Episode:
    """One rollout of one task: its sub-traces in order, how it ended, and its counters.

    Attributes:
        sub_traces: the context windows in order; each says why it ended (``SubTrace.end``).
        task_id: which task (environment and seed) this episode solved.
        group_id: GRPO groups episodes (never sub-traces) that share this id.
        end: ``terminated`` (the environment said done: nothing to bootstrap) or ``truncated``
            (a turn, token or compaction cap stopped it: bootstrap from V or mask, by config).
        truncation_reason: why a truncated episode was cut (e.g. ``max_turns``); None when terminated.
        num_turns: policy turns taken.
        num_tool_errors: tool calls that came back as an error observation.
        info: free-form facts from the environment (e.g. ``success``); JSON-serialisable.
        final_observation_ids: the tokens of the observation that followed a truncated episode's last
            action but was never shown to the model (a cap stopped the episode first; it is in no
            sub-trace). The state the episode stopped in is its last sub-trace followed by these tokens:
            what ``ppo.truncation: bootstrap`` values. Empty when nothing was withheld.
    """

    sub_traces: tuple[SubTrace, ...]
    task_id: str
    group_id: str
    end: EndReason
    truncation_reason: str | None = None
    num_turns: int = 0
    num_tool_errors: int = 0
    info: Mapping[str, Any] = field(default_factory=dict)
    final_observation_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.sub_traces, tuple):
            object.__setattr__(self, "sub_traces", tuple(self.sub_traces))
        if not isinstance(self.final_observation_ids, tuple):
            object.__setattr__(self, "final_observation_ids", tuple(self.final_observation_ids))
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in self.final_observation_ids):
            raise ValueError("final_observation_ids: expected non-negative ints")
        if not self.sub_traces:
            raise ValueError("sub_traces: an episode needs at least one sub-trace")
        if not all(isinstance(s, SubTrace) for s in self.sub_traces):
            raise ValueError("sub_traces: expected SubTrace records")
        if not isinstance(self.group_id, str) or not self.group_id:
            raise ValueError(f"group_id: expected a non-empty str, got {self.group_id!r}")
        if self.end not in ("terminated", "truncated"):
            raise ValueError(f"end: expected 'terminated' or 'truncated', got {self.end!r}")
        if (self.end == "truncated") != (self.truncation_reason is not None):
            raise ValueError("truncation_reason: required exactly when end == 'truncated'")
        for name in ("num_turns", "num_tool_errors"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {value!r}")

    @property
    def terminated(self) -> bool:
        return self.end == "terminated"

    @property
    def truncated(self) -> bool:
        return self.end == "truncated"

    @property
    def reward(self) -> float:
        """Total reward: the sum of every per-token reward of every sub-trace."""
        return float(sum(s.reward for s in self.sub_traces))

    @property
    def num_compactions(self) -> int:
        """Windows closed by a compaction (``SubTrace.end``); for records without ``end``, one less than
        the number of sub-traces. A compaction whose resumed window had no room (the episode then ends
        ``context_full``) counts: its summary was written."""
        if all(s.end is None for s in self.sub_traces):
            return len(self.sub_traces) - 1
        return sum(s.end == "compaction" for s in self.sub_traces)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.sub_traces)

    @property
    def num_policy_tokens(self) -> int:
        return sum(s.num_policy_tokens for s in self.sub_traces)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "group_id": self.group_id,
            "end": self.end,
            "truncation_reason": self.truncation_reason,
            "num_turns": self.num_turns,
            "num_tool_errors": self.num_tool_errors,
            "info": dict(self.info),
            "final_observation_ids": list(self.final_observation_ids),
            "sub_traces": [s.to_dict() for s in self.sub_traces],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Episode:
        return cls(
            sub_traces=tuple(SubTrace.from_dict(s) for s in d["sub_traces"]),
            task_id=d["task_id"],
            group_id=d["group_id"],
            end=d["end"],
            truncation_reason=d.get("truncation_reason"),
            num_turns=d.get("num_turns", 0),
            num_tool_errors=d.get("num_tool_errors", 0),
            info=d.get("info", {}),
            final_observation_ids=tuple(d.get("final_observation_ids", ())),
        )

