"""Arithmetic environments that fail on purpose inside a rollout worker (tests/test_ray_rollout.py).

Importable by ``module:attr`` (``faulty_envs:DyingArithmetic``): a Ray worker gets the driver's
``sys.path``, which holds this folder under pytest.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from agentrl.envs.arithmetic import Arithmetic


class DyingArithmetic(Arithmetic):
    """Kills its own process (the worker) at the reset of task ``die_seed``, once: the first to get there
    writes ``marker`` and dies; a worker that plays the shard again finds the marker and goes on."""

    def __init__(self, *, die_seed: int, marker: str, **knobs: Any) -> None:
        super().__init__(**knobs)
        self.die_seed, self.marker = die_seed, Path(marker)

    def setup(self, rng: random.Random, options: dict) -> str:
        if self._seed == self.die_seed and not self.marker.exists():
            self.marker.write_text("died once")
            os._exit(1)
        return super().setup(rng, options)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        self._seed = seed
        return super().reset(seed=seed, options=options)


class HangingArithmetic(Arithmetic):
    """Sleeps for an hour in the first step of task ``hang_seed`` (an environment that hangs)."""

    def __init__(self, *, hang_seed: int, **knobs: Any) -> None:
        super().__init__(**knobs)
        self.hang_seed = hang_seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        self._seed = seed
        return super().reset(seed=seed, options=options)

    def step(self, action: str):  # type: ignore[override]
        if self._seed == self.hang_seed:
            time.sleep(3600)
        return super().step(action)
