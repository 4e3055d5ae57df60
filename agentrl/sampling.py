"""What a sampling backend takes and returns: ``SamplingParams``, ``Generation`` and the ``Sampler`` protocol.

Kept apart from the backends (``agentrl.rollout`` for the local torch one) so that the runner, which
drives any backend, imports no torch. See ``agentrl.rollout`` for the session model and how log-probs
are recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn.

    Attributes:
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling mass in (0, 1]; 1 disables it.
        max_new_tokens: the most tokens sampled in one turn.
        stop_token_ids: a row stops right after sampling any of these (the stop token is kept).
        seed: seeds the sampling generator; ``None`` draws a fresh, non-reproducible seed.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise ValueError(f"temperature: expected a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected an int >= 1, got {self.max_new_tokens!r}")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids: expected non-negative ints, got {self.stop_token_ids!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an int or None, got {self.seed!r}")


@dataclass(frozen=True)
class Generation:
    """One sampled turn: the policy tokens (a final stop token included) and their recorded log-probs."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"logprobs: length {len(self.logprobs)} != len(token_ids) {len(self.token_ids)}")
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"finish_reason: expected 'stop' or 'length', got {self.finish_reason!r}")


def per_session(params: SamplingParams | Sequence[SamplingParams], sessions: int) -> list[SamplingParams]:
    """``Sampler.generate``'s ``params`` as one ``SamplingParams`` per session."""
    if isinstance(params, SamplingParams):
        return [params] * sessions
    out = list(params)
    if len(out) != sessions or not all(isinstance(p, SamplingParams) for p in out):
        raise ValueError(f"params: expected one SamplingParams or {sessions} of them (one per session)")
    return out


@runtime_checkable
class Sampler(Protocol):
    """A sampling backend with one session per context window (local torch now; vLLM or remote later)."""

    def open(self, prompt_ids: Sequence[int]) -> int:
        """Start a session from a prompt (queued, encoded by the next ``generate``); return its id."""
        ...

    def append(self, session: int, token_ids: Sequence[int]) -> None:
        """Queue observation tokens after what the session holds; they are encoded lazily."""
        ...

    def generate(
        self, sessions: Sequence[int], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[Generation]:
        """Sample one turn for each session, batched; results are in the order of ``sessions``.

        ``params``: one for every session, or one per session (``per_session``), so that turns of
        different lengths (actions and summaries) share one batch. A backend may require per-session
        params to agree on everything but ``max_new_tokens`` (the local torch one does).
        """
        ...

    def close(self, session: int) -> None:
        """Forget a session and free its cache."""
        ...
