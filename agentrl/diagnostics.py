"""Credit diagnostics: what explains a PPO or GRPO result on compacted episodes (docs/metrics.md).

One iteration's prepared rows (``Learner.prepare``) and its episodes in, ``credit/`` metrics out:

- per sub-trace index (window 0, 1, 2, and 3 and later pooled): the mean and (population) variance of
  the advantages over that window's policy tokens, and for PPO the critic's explained variance there.
  A critic that explains the first window and not the later ones, or advantages whose scale shrinks
  window by window, show here and not in the batch-wide ``critic/explained_variance``.
- the number of GRPO groups (episodes sharing a ``group_id``) and how many of them hold episodes with
  different numbers of sub-traces: where the group comparison mixes compacted and uncompacted episodes.

A slot with no policy token in the batch is left out (no key), so a run without compaction logs only
``sub_trace_0``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch

from agentrl.batch import Row
from agentrl.metrics import CREDIT_GROUPS, CREDIT_SLOTS, CREDIT_SUB_TRACE, CREDIT_UNEVEN_GROUPS
from agentrl.types import Episode


def explained_variance(returns: torch.Tensor, values: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over 1-D tensors (population variances, float64); NaN, undefined, when
    there are no returns or they have (numerically) no variance: a std below ``1e-3`` times their scale
    (at least 1), where the ratio says nothing but how small ``Var(R)`` is (returns of 0 but for one
    token made it -60). NaN is written as ``null`` and printed as ``ev=undefined``."""
    r, v = returns.double(), values.double()
    if r.numel() == 0:
        return math.nan
    return_std, residual_std = float(r.std(correction=0)), float((r - v).std(correction=0))
    scale = max(abs(float(r.mean())), return_std, 1.0)
    return 1.0 - residual_std**2 / return_std**2 if return_std > 1e-3 * scale else math.nan


def slot_of(sub_trace_index: int) -> str:
    """The ``CREDIT_SLOTS`` entry of a sub-trace index: its own number up to 2, then ``3+``."""
    last = len(CREDIT_SLOTS) - 1
    return CREDIT_SLOTS[sub_trace_index] if sub_trace_index < last else CREDIT_SLOTS[last]


def sub_trace_metrics(rows: Sequence[Row]) -> dict[str, float]:
    """Advantage mean and variance (and, with values and returns, explained variance) per slot."""
    picked: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        picked[slot_of(row.sub_trace_index)].append(row)
    out: dict[str, float] = {}
    for slot, mine in picked.items():
        if any(r.advantages is None for r in mine):
            continue
        adv = torch.cat([r.advantages[r.loss_mask] for r in mine]).double()
        if adv.numel() == 0:
            continue
        out[CREDIT_SUB_TRACE[slot, "adv_mean"]] = float(adv.mean())
        out[CREDIT_SUB_TRACE[slot, "adv_var"]] = float(adv.var(correction=0))
        if all(r.returns is not None and r.old_values is not None for r in mine):
            returns = torch.cat([r.returns[r.loss_mask] for r in mine])  # type: ignore[index]
            values = torch.cat([r.old_values[r.loss_mask] for r in mine])  # type: ignore[index]
            out[CREDIT_SUB_TRACE[slot, "explained_variance"]] = explained_variance(returns, values)
    return out


def group_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """How many groups there are, and how many mix episodes of different sub-trace counts."""
    counts: dict[str, set[int]] = defaultdict(set)
    for e in episodes:
        counts[e.group_id].add(len(e.sub_traces))
    uneven = sum(len(c) > 1 for c in counts.values())
    return {CREDIT_GROUPS: float(len(counts)), CREDIT_UNEVEN_GROUPS: float(uneven)}


def credit_metrics(rows: Sequence[Row], episodes: Sequence[Episode]) -> dict[str, float]:
    """The ``credit/`` metrics of one iteration (module docstring)."""
    return sub_trace_metrics(rows) | group_metrics(episodes)
