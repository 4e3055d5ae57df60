"""A sampler that stands in for the model: it writes the same text every time, so a test controls exactly
what the "model" writes, and ``play`` runs a few episodes of an environment with it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentrl.chat import ChatFormat
from agentrl.runner import Runner, RunnerConfig, Task
from agentrl.sampling import Generation, SamplingParams, per_session


class Scripted:
    """Writes ``text`` closed by the stop token on every generate, cut at the session's token limit (finish
    reason ``length``, no stop token) as a real sampler's reply would be."""

    def __init__(self, chat: ChatFormat, text: str) -> None:
        self.ids = (*chat.encode(text), chat.im_end_id)
        self.sessions = 0

    def open(self, prompt_ids: Sequence[int]) -> int:
        self.sessions += 1
        return self.sessions

    def append(self, session: int, token_ids: Sequence[int]) -> None:
        """The scripted text does not depend on what the session has seen."""

    def generate(self, sessions: Sequence[int], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[Generation]:
        out = []
        for p in per_session(params, len(sessions)):
            ids = self.ids[: p.max_new_tokens]
            out.append(Generation(ids, (-1.0,) * len(ids), "length" if len(ids) < len(self.ids) else "stop"))
        return out

    def close(self, session: int) -> None:
        """No state per session to free."""


def play(chat: ChatFormat, text: str, make_env: Any, *, tasks: int = 2, **config: Any):
    """Run ``tasks`` episodes (seeds 0, 1, ...) of ``make_env`` with the scripted ``text``; ``config``
    overrides the runner's settings (3 turns, 4 concurrent sessions by default)."""
    cfg = RunnerConfig(**{"max_turns": 3, "max_concurrent": 4, **config})
    return Runner(Scripted(chat, text), chat, cfg).run(
        make_env, [Task(seed, f"g{seed}") for seed in range(tasks)], seed=0
    )
