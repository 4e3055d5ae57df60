"""Outcome advantages and whitening: GRPO's group-normalised episode advantages, their spread over an
episode's policy tokens, and masked whitening (docs/algorithms.md, section "Advantages").

- ``grpo_advantages`` divides by the sample std (Bessel-corrected) plus ``eps``; DeepSeekMath (Shao et
  al. 2024) does not say which std. A group whose rewards are all equal, a group of one included, gets
  exactly 0.
- ``whiten`` uses the biased (population) variance over the mask-1 entries.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from agentrl.tensor_checks import bool_mask, check_episode_index, check_shape, check_tensor, work_dtype

__all__ = ["broadcast_to_tokens", "grpo_advantages", "whiten"]


def _group_index(
    group_ids: Sequence[Hashable] | torch.Tensor, n: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """(N,) dense group numbers 0..G-1 for ``group_ids`` (a 1-D integer tensor or a sequence), and G."""
    if isinstance(group_ids, torch.Tensor):
        check_tensor("group_ids", group_ids, 1, floating=False)
        check_shape("group_ids", group_ids, (n,), "len(rewards)")
        unique, index = torch.unique(group_ids.to(device), return_inverse=True)
        return index, unique.shape[0]
    if isinstance(group_ids, str | bytes) or not isinstance(group_ids, Sequence):
        kind = type(group_ids).__name__
        raise ValueError(f"group_ids: expected a sequence of ids or a 1-D tensor, got {kind}")
    if len(group_ids) != n:
        raise ValueError(f"group_ids: length {len(group_ids)} != len(rewards) {n}")
    number: dict[Hashable, int] = {}
    try:
        dense = [number.setdefault(g, len(number)) for g in group_ids]
    except TypeError as e:
        raise ValueError(f"group_ids: ids must be hashable ({e})") from None
    return torch.tensor(dense, dtype=torch.long, device=device), len(number)


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> torch.Tensor:
    """GRPO advantages: one per episode, its reward normalised within its group.

    DeepSeekMath (Shao et al. 2024), outcome supervision: ``A_i = (r_i - mean(r_g)) / (std(r_g) + eps)``
    over the episodes of group g. ``std`` is the **sample** standard deviation (Bessel-corrected,
    divisor n - 1), as ``torch.std`` computes it. ``scale_by_std=False`` gives ``A_i = r_i - mean(r_g)``,
    Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"), which removes the std division
    because it up-weights groups that are almost all right or all wrong. A group whose rewards are all
    equal gets exactly 0, and so does a group of one (nothing to compare with).

    Args:
        rewards: (N,) episode rewards.
        group_ids: N group ids (str, int, any hashable), or an (N,) integer tensor.
        eps: > 0, added to the std so a near-constant group stays finite.
        scale_by_std: divide by the group std (GRPO) or not (Dr. GRPO).

    Returns:
        (N,) advantages, rewards' dtype. Spread them over tokens with ``broadcast_to_tokens``.
    """
    check_tensor("rewards", rewards, 1, floating=True)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise ValueError(f"eps: expected a number > 0, got {eps!r}")
    group, G = _group_index(group_ids, rewards.shape[0], rewards.device)
    out_dtype, dtype = work_dtype(rewards)
    rewards = rewards.to(dtype)
    size = torch.zeros(G, dtype=dtype, device=rewards.device).index_add_(0, group, torch.ones_like(rewards))
    mean = torch.zeros_like(size).index_add_(0, group, rewards) / size
    spread = rewards - mean[group]
    high = torch.full_like(size, -torch.inf).scatter_reduce(0, group, rewards, "amax")
    low = torch.full_like(size, torch.inf).scatter_reduce(0, group, rewards, "amin")
    # mean() of equal floats can miss them by an ulp; equal rewards carry no signal, so force 0.
    spread = torch.where((high == low)[group], torch.zeros_like(spread), spread)
    if not scale_by_std:
        return spread.to(out_dtype)
    var = torch.zeros_like(size).index_add_(0, group, spread**2) / (size - 1).clamp_min(1)
    return (spread / (var.sqrt()[group] + eps)).to(out_dtype)


def broadcast_to_tokens(
    episode_advantages: torch.Tensor, episode_index: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Give every policy token of every sub-trace its episode's advantage (GRPO, docs/design.md section 6).

    Args:
        episode_advantages: (E,) one advantage per episode (e.g. from ``grpo_advantages``).
        episode_index: (B,) integer episode of each row, in [0, E).
        mask: (B, T) 1 at policy tokens (bool, or 0/1 of any dtype).

    Returns:
        (B, T) ``episode_advantages[episode_index[b]]`` at policy tokens, 0 elsewhere.
    """
    m = bool_mask(mask)
    check_tensor("episode_advantages", episode_advantages, 1, floating=True)
    E = episode_advantages.shape[0]
    index = check_episode_index(episode_index, m.shape[0], E, "E = len(episode_advantages)")
    per_row = episode_advantages[index]
    return torch.where(m, per_row[:, None], torch.zeros_like(per_row)[:, None])


def whiten(
    x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Masked whitening: normalise ``x`` with the mean and variance of its mask-1 entries.

    The statistics are taken over all mask-1 entries of the tensor together (the whole batch, not per
    row); the variance is the **biased** (population) one, divisor n, so one entry gives variance 0.
    ``shift_mean=True``: ``(x - mean) / sqrt(var + eps)``. ``shift_mean=False``: ``x / sqrt(var + eps)``,
    which keeps the sign of every entry (the scale changes, the zero point does not). Mask-0 entries come
    out 0 and are never read (NaN there is harmless); with no mask-1 entry the result is all zeros.

    Args:
        x: floating tensor, any shape.
        mask: 0/1 or bool tensor of the same shape.
        shift_mean: subtract the mean.
        eps: > 0, added to the variance (so a constant ``x`` gives 0, not NaN).

    Returns:
        Tensor of ``x``'s shape and dtype.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a floating-point torch.Tensor, got {got}")
    m = bool_mask(mask, dim=x.dim())
    check_shape("mask", m, tuple(x.shape), "x shape")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise ValueError(f"eps: expected a number > 0, got {eps!r}")
    out_dtype, dtype = work_dtype(x)
    zero = torch.zeros((), dtype=dtype, device=x.device)
    kept = torch.where(m, x.to(dtype), zero)
    count = m.sum().clamp_min(1).to(dtype)
    mean = kept.sum() / count
    var = torch.where(m, (kept - mean) ** 2, zero).sum() / count
    out = (kept - mean if shift_mean else kept) * torch.rsqrt(var + eps)
    return torch.where(m, out, zero).to(out_dtype)
