"""Advantages: skip-observation GAE (per row and per episode across sub-traces) and length-adaptive
lambda. GRPO's group advantages and masked whitening are in ``agentrl.group_advantages``.

Plain torch: tensors and keyword numbers in, tensors out, the float dtype of the inputs preserved (half
precision inputs are computed in float32 and cast back). A time step is a **policy token** (mask 1);
prompt, template and observation tokens (mask 0) are skipped: they neither discount nor bootstrap,
their rewards and values are never read (NaN there is harmless), and every output there is 0.
The formulas, the flags and their papers are in docs/algorithms.md (section "Advantages").

Departures from the papers:
- GAE (Schulman et al. 2016) runs over environment steps. Here the steps are the policy tokens of a row
  (or of a whole episode); observation tokens between two policy tokens are not steps at all.
- Episode-level GAE chains the sub-traces of a compacted episode: the last policy token of a sub-trace
  bootstraps from the value at the first policy token of the next one, a state seen through a
  different (compacted) context. The paper has one unbroken sequence of states.
- A truncated episode with ``truncation="bootstrap"`` bootstraps from ``bootstrap_values``: the critic's
  value of the state the episode stopped in, after its last observation (one more critic evaluation
  per cut episode, made by the learner). ``truncation="mask"`` drops the episode's tokens from the loss
  instead; ``truncation="zero"`` (the default of ``ppo.truncation``) ends it as if terminated
  (bootstrap 0: the cap is part of the task, and a cut episode's return is the reward it got).
- ``mode="local"`` (sub-trace-local GAE scaled by ``(gamma*lam) ** (policy tokens after it)``) is this
  project's alternative, not a paper's.
- ``length_adaptive_lambda`` (VAPO, Yue et al. 2025) is clamped to [0, 1): the formula is negative for
  ``alpha * l < 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from agentrl.tensor_checks import (
    bool_mask,
    check_episode_index,
    check_shape,
    check_tensor,
    check_unit,
    work_dtype,
)

TRUNCATION_MODES = ("bootstrap", "mask", "zero")
EPISODE_GAE_MODES = ("episode", "local")
# Positions per block of the reverse scan: a Python loop of T / SCAN_CHUNK steps, each with
# (B, SCAN_CHUNK, SCAN_CHUNK) temporaries.
SCAN_CHUNK = 32

Lam = float | torch.Tensor


@dataclass(frozen=True)
class GAEOutput:
    """Advantages and value targets of a batch of sub-traces, with the mask of tokens to train on.

    Attributes:
        advantages: (B, T) GAE advantages; 0 wherever ``mask`` is False.
        returns: (B, T) value targets, ``advantages + values``; 0 wherever ``mask`` is False.
        mask: (B, T) bool, the policy tokens that keep a loss; the input mask less the tokens of
            truncated episodes when ``truncation="mask"``.
    """

    advantages: torch.Tensor
    returns: torch.Tensor
    mask: torch.Tensor


def _lam_tensor(lam: Lam, n: int, dtype: torch.dtype, device: torch.device, what: str) -> torch.Tensor:
    """``lam`` as an (n,) tensor; a tensor must already be (n,), with values in [0, 1]."""
    if isinstance(lam, torch.Tensor):
        check_tensor("lam", lam, 1, floating=True)
        check_shape("lam", lam, (n,), what)
        if not bool(((lam >= 0) & (lam <= 1)).all()):
            raise ValueError("lam: expected values in [0, 1]")
        return lam.to(device=device, dtype=dtype)
    check_unit("lam", lam)
    return torch.full((n,), float(lam), dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------
# Core: skip-observation GAE on checked, sanitised tensors.


def _reverse_scan(
    x: torch.Tensor, mask: torch.Tensor, c: torch.Tensor, chunk: int = SCAN_CHUNK
) -> torch.Tensor:
    """S_t = x_t + d_t * S_{t+1}, S_T = 0, with d_t = c (per row) at mask-1 positions and 1 elsewhere.

    Blocked so that the Python loop has T / chunk steps instead of T. Inside a block the recurrence
    unrolls to S_t = sum_{k>=t} c^(e_k - e_t) x_k + c^(n - e_t) S_end, where e_t counts the block's
    policy tokens before t and n all of them; exponents stay in [0, chunk], so no power overflows or
    underflows the way a whole-row c^(-t) rescaling would. ``x`` must be 0 at mask-0 positions.
    Elementwise products and a sum, not a matmul, so TF32 matmul settings cannot change the result.
    """
    B, T = x.shape
    out = torch.empty_like(x)
    carry = x.new_zeros(B)
    base = c[:, None, None]
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).triu()  # [t, k]: k >= t
    for end in range(T, 0, -chunk):
        start = max(0, end - chunk)
        xb, mb = x[:, start:end], mask[:, start:end].to(x.dtype)
        before = torch.cumsum(mb, dim=1) - mb  # e_t, (B, C)
        gap = (before[:, None, :] - before[:, :, None]).clamp_min(0)  # e_k - e_t, (B, C, C)
        n = end - start
        weights = torch.where(upper[:n, :n], base**gap, torch.zeros((), dtype=x.dtype, device=x.device))
        local = (weights * xb[:, None, :]).sum(dim=-1)
        tail = c[:, None] ** (mb.sum(dim=1, keepdim=True) - before)
        out[:, start:end] = local + tail * carry[:, None]
        carry = out[:, start]
    return out


def _gae_core(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: torch.Tensor,
    bootstrap: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE on checked inputs in the compute dtype; see ``gae``. ``lam`` and ``bootstrap`` are (B,)."""
    B, T = rewards.shape
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    if T == 0:
        return torch.zeros_like(values), torch.zeros_like(values)
    rewards = torch.where(mask, rewards, zero)  # mask-0 entries (NaN included) never reach the math
    values = torch.where(mask, values, zero)
    # Index of the next policy token strictly after t (T: none, read the bootstrap value there).
    positions = torch.arange(T, device=mask.device).expand(B, T)
    at_or_after = torch.where(mask, positions, T).flip(1).cummin(dim=1).values.flip(1)
    after = torch.cat([at_or_after[:, 1:], at_or_after.new_full((B, 1), T)], dim=1)
    next_values = torch.cat([values, bootstrap[:, None]], dim=1).gather(1, after)
    deltas = torch.where(mask, rewards + gamma * next_values - values, zero)
    advantages = torch.where(mask, _reverse_scan(deltas, mask, gamma * lam), zero)
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


# ----------------------------------------------------------------------------------------------------
# Public GAE entry points.


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: Lam,
    bootstrap: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the policy tokens of each row, skipping the others.

    GAE (Schulman et al. 2016) with a time step per policy token. Walking a row's policy tokens right to
    left, with V_next the value at the row's next policy token (tokens in between are skipped: no
    discount, no bootstrap) or, after the last one, ``bootstrap``:

        delta_t = r_t + gamma * V_next - V_t
        A_t     = delta_t + gamma * lam * A_next        (A_next = 0 after the last policy token)
        R_t     = A_t + V_t

    Rewards at mask-0 positions are ignored: the runner puts rewards on policy tokens. A row with no
    policy token comes out all zeros. Compute it under ``torch.no_grad()`` on detached values.

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) critic values V(s_t) at each token.
        mask: (B, T) 1 at policy tokens, 0 elsewhere (bool, or 0/1 of any dtype).
        gamma: discount per policy token, in [0, 1].
        lam: GAE lambda in [0, 1]: a float, or a (B,) tensor for a lambda per row.
        bootstrap: (B,) value of the state after each row's last policy token; default 0 (terminal).

    Returns:
        ``(advantages, returns)``, both (B, T), 0 at mask-0 positions, dtype of rewards/values promoted.
    """
    m = bool_mask(mask)
    check_tensor("rewards", rewards, 2, floating=True)
    check_tensor("values", values, 2, floating=True)
    check_shape("rewards", rewards, tuple(m.shape), "mask shape")
    check_shape("values", values, tuple(m.shape), "mask shape")
    check_unit("gamma", gamma)
    out_dtype, dtype = work_dtype(rewards, values)
    B = m.shape[0]
    lam_b = _lam_tensor(lam, B, dtype, values.device, "batch size (B,)")
    if bootstrap is None:
        bootstrap = torch.zeros(B, dtype=dtype, device=values.device)
    check_tensor("bootstrap", bootstrap, 1, floating=True)
    check_shape("bootstrap", bootstrap, (B,), "batch size")
    bootstrap = bootstrap.to(device=values.device, dtype=dtype)
    adv, ret = _gae_core(rewards.to(dtype), values.to(dtype), m, gamma, lam_b, bootstrap)
    return adv.to(out_dtype), ret.to(out_dtype)


@dataclass(frozen=True)
class _Layout:
    """Where each row's policy tokens sit in its episode's sequence of policy tokens."""

    row_tokens: torch.Tensor  # (B,) policy tokens per row
    row_offset: torch.Tensor  # (B,) policy tokens of the episode in earlier rows
    episode_tokens: torch.Tensor  # (E,) policy tokens per episode


def _layout(mask: torch.Tensor, episode_index: torch.Tensor, num_episodes: int) -> _Layout:
    row_tokens = mask.sum(dim=1)
    episode_tokens = torch.zeros(num_episodes, dtype=row_tokens.dtype, device=mask.device)
    episode_tokens.index_add_(0, episode_index, row_tokens)
    # A stable sort keeps each episode's rows in their given (sub-trace) order; rows of one episode
    # need not be adjacent.
    order = torch.sort(episode_index, stable=True).indices
    before_sorted = torch.cumsum(row_tokens[order], dim=0) - row_tokens[order]
    episode_start = torch.cumsum(episode_tokens, dim=0) - episode_tokens
    row_offset = torch.empty_like(row_tokens)
    row_offset[order] = before_sorted - episode_start[episode_index[order]]
    return _Layout(row_tokens, row_offset, episode_tokens)


def _episode_mode(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    episode_index: torch.Tensor,
    layout: _Layout,
    gamma: float,
    lam_e: torch.Tensor,
    bootstrap_e: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather every episode's policy tokens into one dense row, run GAE there, scatter back."""
    E = lam_e.shape[0]
    length = int(layout.episode_tokens.max()) if E > 0 else 0  # host sync: the buffer's size
    if length == 0:
        return torch.zeros_like(values), torch.zeros_like(values)
    column = layout.row_offset[:, None] + torch.cumsum(mask, dim=1) - 1  # index in the episode's tokens
    row = episode_index[:, None].expand_as(column)
    row_p, column_p = row[mask], column[mask]

    def dense(x: torch.Tensor) -> torch.Tensor:
        buffer = x.new_zeros(E, length)
        buffer[row_p, column_p] = x[mask]
        return buffer

    dense_mask = torch.arange(length, device=mask.device)[None, :] < layout.episode_tokens[:, None]
    adv_e, ret_e = _gae_core(dense(rewards), dense(values), dense_mask, gamma, lam_e, bootstrap_e)
    column = column.clamp(0, length - 1)  # mask-0 tokens read some entry; torch.where drops it
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(mask, adv_e[row, column], zero), torch.where(mask, ret_e[row, column], zero)


def episode_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    episode_index: torch.Tensor,
    *,
    gamma: float,
    lam: Lam,
    truncated: torch.Tensor,
    truncation: Literal["bootstrap", "mask", "zero"] = "zero",
    mode: Literal["episode", "local"] = "episode",
    bootstrap_values: torch.Tensor | None = None,
) -> GAEOutput:
    """Skip-observation GAE over whole episodes, for a batch of sub-traces (one per row).

    Row b is a sub-trace of episode ``episode_index[b]``; an episode's rows appear in sub-trace order
    (not necessarily adjacent). ``mode="episode"`` (docs/design.md section 6) is ``gae`` run on the
    concatenation of the episode's policy tokens: the last policy token of a sub-trace bootstraps from
    the value at the first policy token of the next sub-trace, and its advantage continues from there.
    ``mode="local"`` runs ``gae`` on each sub-trace alone (bootstrap 0 at a sub-trace's end), then
    multiplies its advantages by ``(gamma * lam) ** k`` with k the episode's policy tokens in later
    sub-traces. In both modes ``returns = advantages + values`` at the tokens kept.

    The end of an episode: terminated, bootstrap 0. Truncated with ``truncation="bootstrap"``: the
    episode's ``bootstrap_values`` entry, the critic's value of the state it stopped in (after its last
    observation), so the last delta is ``r + gamma * V_end - V_last``. Truncated with
    ``truncation="mask"``: every token of the episode is dropped from the returned ``mask`` (its return
    is unknown, and with lam = 1 every advantage depends on it), and its advantages and returns are 0.
    Truncated with ``truncation="zero"`` (the default): as terminated. Where every failure is a cut (a
    task that ends only on success, under a turn cap), ``bootstrap`` with ``gamma = 1`` gives failures
    the critic's own estimate as their return: nothing pulls the values down, and they drift up to the
    success reward; ``zero`` scores a cut as the failure it is.

    Args:
        rewards: (B, T) per-token rewards (read at policy tokens only).
        values: (B, T) critic values at each token (read at policy tokens only).
        mask: (B, T) 1 at policy tokens, 0 elsewhere (bool, or 0/1 of any dtype).
        episode_index: (B,) integer episode of each row, in [0, E).
        gamma: discount per policy token, in [0, 1].
        lam: GAE lambda in [0, 1]: a float, or an (E,) tensor, one per episode (e.g. from
            ``length_adaptive_lambda``).
        truncated: (E,) bool, True for an episode that was cut short rather than terminated.
        truncation: what a truncated episode does, ``"bootstrap"``, ``"mask"`` or ``"zero"``.
        mode: ``"episode"`` or ``"local"``.
        bootstrap_values: (E,) the value of the state each episode stopped in; read for truncated
            episodes with ``truncation="bootstrap"`` only, and required then.

    Returns:
        ``GAEOutput`` with (B, T) advantages, returns and bool mask.
    """
    m = bool_mask(mask)
    B = m.shape[0]
    check_tensor("rewards", rewards, 2, floating=True)
    check_tensor("values", values, 2, floating=True)
    check_shape("rewards", rewards, tuple(m.shape), "mask shape")
    check_shape("values", values, tuple(m.shape), "mask shape")
    check_tensor("truncated", truncated, 1, floating=False)
    E = truncated.shape[0]
    index = check_episode_index(episode_index, B, E, "E = len(truncated)").to(m.device)
    check_unit("gamma", gamma)
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation: expected one of {TRUNCATION_MODES}, got {truncation!r}")
    if mode not in EPISODE_GAE_MODES:
        raise ValueError(f"mode: expected one of {EPISODE_GAE_MODES}, got {mode!r}")
    out_dtype, dtype = work_dtype(rewards, values)
    zero = torch.zeros((), dtype=dtype, device=values.device)
    r = torch.where(m, rewards.to(dtype), zero)
    v = torch.where(m, values.to(dtype), zero)
    lam_e = _lam_tensor(lam, E, dtype, v.device, "number of episodes (E,) = len(truncated)")
    cut = truncated.to(device=m.device, dtype=torch.bool)
    layout = _layout(m, index, E)
    bootstrap_e = _end_values(bootstrap_values, cut, truncation, E, dtype, v.device)
    if mode == "episode":
        adv, ret = _episode_mode(r, v, m, index, layout, gamma, lam_e, bootstrap_e)
    else:
        # The row holding the episode's last policy token bootstraps from the state the episode ended in.
        ends = layout.row_offset + layout.row_tokens == layout.episode_tokens[index]
        holds_last = (layout.row_tokens > 0) & ends
        bootstrap_b = torch.where(holds_last, bootstrap_e[index], zero)
        lam_b = lam_e[index]
        adv, _ = _gae_core(r, v, m, gamma, lam_b, bootstrap_b)
        later = (layout.episode_tokens[index] - layout.row_offset - layout.row_tokens).to(dtype)
        adv = adv * ((gamma * lam_b) ** later)[:, None]
        ret = torch.where(m, adv + v, zero)
    keep = m & ~(cut[index] & (truncation == "mask"))[:, None]
    adv, ret = torch.where(keep, adv, zero), torch.where(keep, ret, zero)
    return GAEOutput(adv.to(out_dtype), ret.to(out_dtype), keep)


def _end_values(
    bootstrap_values: torch.Tensor | None, cut: torch.Tensor, truncation: str, E: int, dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """(E,) value after each episode's last policy token: ``bootstrap_values`` for the truncated episodes
    under ``truncation="bootstrap"``, 0 for every other."""
    zeros = torch.zeros(E, dtype=dtype, device=device)
    if truncation != "bootstrap" or not bool(cut.any()):
        return zeros
    if bootstrap_values is None:
        raise ValueError("bootstrap_values: truncation='bootstrap' needs the value of the state each "
                         "truncated episode stopped in")
    check_tensor("bootstrap_values", bootstrap_values, 1, floating=True)
    check_shape("bootstrap_values", bootstrap_values, (E,), "number of episodes (E,) = len(truncated)")
    end = bootstrap_values.to(device=device, dtype=dtype)
    return torch.where(cut.to(device), end, zeros)


def single_episode_gae(
    rewards: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    *,
    gamma: float,
    lam: float,
    truncated: bool,
    truncation: Literal["bootstrap", "mask", "zero"] = "zero",
    mode: Literal["episode", "local"] = "episode",
    bootstrap_value: float | None = None,
) -> list[GAEOutput]:
    """``episode_gae`` for the sub-traces of one episode given as lists of 1-D tensors.

    Args:
        rewards: one (T_i,) tensor per sub-trace, in order.
        values: one (T_i,) tensor per sub-trace.
        masks: one (T_i,) 0/1 tensor per sub-trace.
        gamma, lam, truncation, mode: as in ``episode_gae`` (``lam`` a float here).
        truncated: whether the episode was cut short.
        bootstrap_value: the value of the state the episode stopped in (``truncation="bootstrap"``).

    Returns:
        One ``GAEOutput`` of (T_i,) tensors per sub-trace.
    """
    n = len(masks)
    if n == 0:
        raise ValueError("masks: an episode needs at least one sub-trace")
    for name, xs in (("rewards", rewards), ("values", values)):
        if len(xs) != n:
            raise ValueError(f"{name}: {len(xs)} sub-traces != len(masks) {n}")
    for i in range(n):
        check_tensor(f"masks[{i}]", masks[i], 1, floating=None)
        for name, xs in (("rewards", rewards), ("values", values)):
            check_tensor(f"{name}[{i}]", xs[i], 1, floating=True)
            check_shape(f"{name}[{i}]", xs[i], tuple(masks[i].shape), f"masks[{i}] shape")
    if not isinstance(truncated, bool):
        raise ValueError(f"truncated: expected a bool, got {truncated!r}")

    def pad(xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence(list(xs), batch_first=True)

    device = values[0].device
    out = episode_gae(
        pad(rewards),
        pad(values),
        pad(masks),
        torch.zeros(n, dtype=torch.long, device=device),
        gamma=gamma,
        lam=lam,
        truncated=torch.tensor([truncated], device=device),
        truncation=truncation,
        mode=mode,
        bootstrap_values=None if bootstrap_value is None else torch.tensor(
            [float(bootstrap_value)], dtype=torch.float64, device=device
        ),
    )
    lengths = [x.shape[0] for x in masks]
    return [
        GAEOutput(out.advantages[i, :k], out.returns[i, :k], out.mask[i, :k]) for i, k in enumerate(lengths)
    ]


def length_adaptive_lambda(num_policy_tokens: torch.Tensor | int | float, alpha: float) -> torch.Tensor:
    """VAPO's length-adaptive GAE lambda, ``1 - 1 / (alpha * l)``, clamped to [0, 1).

    Yue et al. 2025 ("VAPO"), section "Length-Adaptive GAE": choosing lambda so that the sum of the GAE
    weights, 1 / (1 - lambda), equals ``alpha * l`` keeps a long sequence's advantages from being
    dominated by the bootstrapped values near its end. VAPO uses it for the policy's lambda only
    (decoupled lambda: the critic keeps lambda = 1). ``l`` is the episode's number of policy tokens;
    ``alpha * l <= 1`` gives 0, and the result stays strictly below 1 even where float rounding would
    reach it.

    Args:
        num_policy_tokens: policy-token counts ``l`` (>= 0), any shape, or a number.
        alpha: > 0.

    Returns:
        lambda, the shape of ``num_policy_tokens``; float64 for float64 input, float32 otherwise.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"alpha: expected a number > 0, got {alpha!r}")
    if not isinstance(num_policy_tokens, torch.Tensor):
        if isinstance(num_policy_tokens, bool) or not isinstance(num_policy_tokens, int | float):
            raise ValueError(f"num_policy_tokens: expected a tensor or a number, got {num_policy_tokens!r}")
        num_policy_tokens = torch.tensor(float(num_policy_tokens))
    dtype = torch.float64 if num_policy_tokens.dtype == torch.float64 else torch.float32
    lengths = num_policy_tokens.to(dtype)
    if not bool((lengths >= 0).all()):
        raise ValueError("num_policy_tokens: expected counts >= 0")
    below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    # l = 0 gives 1 - inf = -inf, clamped to 0 like any alpha * l <= 1.
    lam = 1.0 - 1.0 / (alpha * lengths)
    return lam.clamp(min=0.0).minimum(below_one.to(lam.device))
