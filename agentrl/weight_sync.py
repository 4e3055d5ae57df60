"""Weight transport from the learner to the rollout engine: the one call to replace for another engine.

The torch backend samples with the policy object itself, so it needs nothing. A sampler that holds its
own copy of the weights (``VLLMSampler``) has ``load_weights(named_tensors)``; ``push_weights`` hands it
the policy's tensors in process. A remote engine or an NCCL broadcast on GPUs is a different body for
this one function; the train loop calls only it, after every policy update, and logs how long it took
(``perf/weight_sync_s``).
"""

from __future__ import annotations

import time
from typing import Any

import torch


def push_weights(sampler: Any, policy: torch.nn.Module) -> float | None:
    """Give ``sampler`` the policy's current weights if it keeps its own; returns the seconds it took,
    or None for a sampler that reads the policy directly (nothing to send)."""
    load = getattr(sampler, "load_weights", None)
    if load is None:
        return None
    start = time.perf_counter()
    with torch.no_grad():
        load((name, tensor.detach()) for name, tensor in policy.state_dict().items())
    return time.perf_counter() - start
