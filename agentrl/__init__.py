"""agentrl: reinforcement learning of LLM agents on long, multi-step, tool-using tasks.

The Python API (``agentrl.api``; docs/api.md): ``load_config``, ``train``, ``evaluate`` and
``compare``. They are imported on first use, so ``import agentrl`` (and ``agentrl --help``) loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["compare", "evaluate", "load_config", "train"]

if TYPE_CHECKING:
    from agentrl.api import compare, evaluate, load_config, train


def __getattr__(name: str) -> Any:
    import importlib

    if name in ("train", "compare"):  # callable modules (agentrl.api's docstring says why)
        return importlib.import_module(f"agentrl.{name}")
    if name in __all__:
        return getattr(importlib.import_module("agentrl.api"), name)
    raise AttributeError(f"module 'agentrl' has no attribute {name!r}")
