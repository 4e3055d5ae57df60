"""The runner's settings: budgets, sampling, compaction and time limits, each checked when built.

``agentrl.runner``'s module docstring explains how the budgets bound an episode; ``agentrl.config``'s
``rollout`` section builds a ``RunnerConfig``. This module imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from agentrl.compaction import CompactionConfig


def _positive_int(value: Any, name: str, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1{' or None' if optional else ''}, got {value!r}")



@dataclass(frozen=True)
class RunnerConfig:
    """The runner's budgets and sampling settings; ``agentrl.runner``'s module docstring
    explains the three budgets.

    Attributes:
        max_response_tokens: the most tokens of one response.
        context_budget: the most tokens of one context window (sub-trace).
        max_turns: the most actions in one episode.
        max_total_tokens: a cap on the tokens over all of an episode's sub-traces, checked before each
            action: the episode stops when its tokens so far plus one maximal response would pass it
            (a summary turn is bounded by its window, not by this cap); None: no cap.
        max_compactions: the most compactions in one episode.
        compaction: the strategy and its settings.
        temperature: sampling temperature (0 = greedy).
        top_p: nucleus sampling mass.
        max_concurrent: episodes in flight at once (one batch).
        tool_error_penalty: reward subtracted per failed tool call (``info["tool_errors"]``: a malformed
            block, an unknown tool, bad arguments, a tool that raised or timed out), on the turn that made
            it; >= 0, 0 = off. A shaping term: the episode's reward includes it, its success does not.
        env_timeout_s: seconds one call into an environment (building it, ``reset``, ``step``, its
            expert or digest) may take before it is abandoned and its episode or task ends
            (``agentrl.env_calls``); None or 0: no limit, calls run inline.
        max_observation_chars: the most characters of one observation message (and of the task text)
            before it is tokenised; longer ones are cut with a marker, counted in
            ``info["observation_chars_cut"]``. None: 16 characters per token of ``context_budget``.
    """

    max_response_tokens: int = 128
    context_budget: int = 1024
    max_turns: int = 32
    max_total_tokens: int | None = None
    max_compactions: int = 8
    compaction: CompactionConfig = field(default_factory=CompactionConfig)
    temperature: float = 1.0
    top_p: float = 1.0
    max_concurrent: int = 64
    tool_error_penalty: float = 0.0
    env_timeout_s: float | None = 60.0
    max_observation_chars: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_response_tokens", "context_budget", "max_turns", "max_concurrent"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.max_total_tokens, "max_total_tokens", optional=True)
        if isinstance(self.max_compactions, bool) or not isinstance(self.max_compactions, int) or (
            self.max_compactions < 0
        ):
            raise ValueError(f"max_compactions: expected an int >= 0, got {self.max_compactions!r}")
        if not isinstance(self.compaction, CompactionConfig):
            raise ValueError(f"compaction: expected a CompactionConfig, got {type(self.compaction).__name__}")
        if self.context_budget <= self.max_response_tokens:
            raise ValueError(
                f"context_budget: {self.context_budget} tokens cannot hold a prompt and one response of "
                f"max_response_tokens={self.max_response_tokens}"
            )
        if self.compaction.strategy == "policy" and self.compaction.max_summary_tokens >= self.context_budget:
            raise ValueError(
                f"compaction.max_summary_tokens: {self.compaction.max_summary_tokens} does not fit in "
                f"context_budget={self.context_budget}"
            )
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}: expected a number, got {value!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature: expected a finite number >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        penalty = self.tool_error_penalty
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not (
            math.isfinite(penalty) and penalty >= 0
        ):
            raise ValueError(f"tool_error_penalty: expected a finite number >= 0, got {penalty!r}")
        limit = self.env_timeout_s
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or not (
            math.isfinite(limit) and limit >= 0
        )):
            raise ValueError(f"env_timeout_s: expected null or a finite number >= 0, got {limit!r}")
        _positive_int(self.max_observation_chars, "max_observation_chars", optional=True)

    @property
    def observation_char_cap(self) -> int:
        """``max_observation_chars``, or its default of 16 characters per token of ``context_budget``."""
        return self.max_observation_chars or 16 * self.context_budget
