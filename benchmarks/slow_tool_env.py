"""Arithmetic whose every step costs 50 ms (``delay_s``) before it answers: a tool with latency.

Used by benchmarks/scale_out.py as ``slow_tool_env:SlowArithmetic``; importable by a Ray worker because
the workers get the driver's ``sys.path``, which holds this folder when the script runs.
"""

from __future__ import annotations

import time
from typing import Any

from agentrl.envs.arithmetic import Arithmetic


class SlowArithmetic(Arithmetic):
    """``Arithmetic`` with ``delay_s`` seconds of waiting in every step (the tool call's latency)."""

    def __init__(self, *, delay_s: float = 0.05, **knobs: Any) -> None:
        super().__init__(**knobs)
        self.delay_s = delay_s

    def step(self, action: str):  # type: ignore[override]
        time.sleep(self.delay_s)  # a sleep, as a remote tool's wait is: it holds no CPU
        return super().step(action)
