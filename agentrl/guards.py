"""The divergence guard: an update that left the weights non-finite or exploding is never checkpointed.

The learner already skips one optimiser step whose loss or gradient norm is not finite. A step can
still be finite and ruinous (``optim.actor_lr=1e10`` writes weights of 1e9): every later log-probability
is then garbage, and a checkpoint of those weights poisons every resume. After each iteration's update
the trainer calls ``check_models``; a parameter that is not finite, or whose largest magnitude is more
than ``GROWTH_LIMIT`` times the largest of the model the run started from (at least 1), raises
``DivergenceError`` naming it, and the run stops before the checkpoint (its last checkpoint stays the
latest; docs/reliability.md). The advantages are checked the same way before an update
(``check_advantages``): a non-finite one, or one beyond ``ADVANTAGE_LIMIT``, comes from a diverged critic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

GROWTH_LIMIT = 1000.0  # training moves weights by a few percent; 1000x is no longer training
ADVANTAGE_LIMIT = 1e9  # rewards are bounded by 1e6 (agentrl.runner.MAX_ABS_REWARD) per step


class DivergenceError(ValueError):
    """An update diverged; the message says where and what to change."""


def _abs_max(p: torch.Tensor) -> float:
    """``max |p|`` (nan when a value is nan); of a parameter sharded by FSDP2, over every rank's shard (a
    collective every rank calls, so that all of them reach the same verdict)."""
    with torch.no_grad():
        if not isinstance(p, DTensor):
            return float(p.detach().abs().max())
        shard = p.to_local().detach()
        top = shard.abs().max().reshape(1).float() if shard.numel() else torch.zeros(1, device=shard.device)
        top = torch.nan_to_num(top, nan=math.inf)  # a max over ranks keeps inf, not surely nan
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return float(top)


def largest_weight(model: Any) -> float:
    """The largest absolute parameter value of ``model`` (inf when one is not finite)."""
    largest = 0.0
    for p in model.parameters():
        if p.numel():
            top = _abs_max(p)
            if not math.isfinite(top):  # max() would keep the earlier value against a nan
                return math.inf  # every FSDP2 rank sees the same reduced value, so all stop here
            largest = max(largest, top)
    return largest


def check_models(models: Iterable[tuple[str, Any]], *, initial_largest: float) -> None:
    """Raise ``DivergenceError`` when a parameter of a ``(name, model)`` is non-finite or passes
    ``GROWTH_LIMIT * max(initial_largest, 1)``."""
    limit = GROWTH_LIMIT * max(initial_largest, 1.0)
    for label, model in models:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.numel():
                    continue
                top = _abs_max(p)
                if not math.isfinite(top) or top > limit:
                    raise DivergenceError(
                        f"the {label} diverged: parameter {name} reached |w| = {top:.3g} (limit {limit:.3g},"
                        f" {GROWTH_LIMIT:g}x the starting model's largest weight)"
                    )


def check_advantages(advantages: Iterable[torch.Tensor | None]) -> None:
    """Raise ``DivergenceError`` when an advantage is non-finite or beyond ``ADVANTAGE_LIMIT``."""
    for row in advantages:
        if row is None or not row.numel():
            continue
        top = float(row.detach().abs().max())
        if not math.isfinite(top) or top > ADVANTAGE_LIMIT:
            raise DivergenceError(
                f"an advantage of {top:.3g} (limit {ADVANTAGE_LIMIT:g}): the critic's values diverged"
            )
