"""Per-token losses, KL estimators, loss aggregation, and log-probabilities/entropy from logits.

Everything here is plain torch: tensors and keyword numbers in, tensors out. Losses are to be
minimised and come back per token, shape (B, T), exactly 0 at mask-0 positions; ``aggregate`` turns a
per-token loss into a scalar with a named mode. Metrics come back as detached 0-d tensors (no host sync).
The formulas, the flags and their papers are in docs/algorithms.md (section "Losses").

Masked positions never leak: values at mask-0 positions (NaN or inf included) are replaced with
``torch.where`` before any arithmetic, so they reach neither the output nor the gradient.

Departures from the papers:
- The log ratio ``logprobs - old_logprobs`` is clamped to [-20, 20] before ``exp`` in ``policy_loss``
  (PPO, Schulman et al. 2017, has no clamp). A ratio beyond e^20 ~ 4.9e8 is always outside any clip
  range; the clamp keeps ``exp`` finite in float32/bfloat16 so that a zero upstream gradient never meets
  an infinite local one (0 * inf = NaN). Only such tokens are affected, and their gradient is 0.
- ``kl`` clamps the log ratio to the same [-20, 20] for every kind, and caps k3 at ``k3_max``
  (default 10) per token; DeepSeekMath (Shao et al. 2024) uses k3 unclamped. See ``kl``.
- The dual clip (Ye et al. 2020) caps the loss of a negative-advantage token at ``-dual_clip * A``,
  written as a min over losses (the paper writes a max over objectives; it is the same thing).
- Aggregation denominators are passed in (``num_tokens``, ``num_seqs``, ``horizon``) so that
  micro-batches summed give exactly the mini-batch loss; the papers define them for a whole batch.
  An empty denominator counts as 1, so an all-masked batch gives a loss of 0, not NaN.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

AGGREGATION_MODES = (
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
    "subtrace-mean-token-mean",
)
KL_KINDS = ("k1", "k2", "k3")
# Bound on |log ratio| before exp: e^20 ~ 4.9e8 is finite in float32 and bfloat16 (not in float16).
LOG_RATIO_CLAMP = 20.0
# Default per-token cap on the k3 estimator, reached at log(pi_ref/pi) ~ 2.6 or ~ -11.
K3_MAX = 10.0

Count = int | float | torch.Tensor


# ----------------------------------------------------------------------------------------------------
# Input checks. Each names the argument at fault.


def _check_float_2d(name: str, x: torch.Tensor, shape: torch.Size | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected shape (B, T), got {tuple(x.shape)}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name}: shape {tuple(x.shape)} != mask shape {tuple(shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Check a (B, T) 0/1 mask and return it as bool.

    A bool mask needs no value check; any other dtype is checked to hold only 0 and 1, which costs one
    device-to-host sync. Pass a bool mask in a hot loop.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"mask: expected shape (B, T), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask: expected only 0 and 1")
    return mask != 0


def _check_count(name: str, value: Count | None) -> None:
    if value is None:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a scalar, got shape {tuple(value.shape)}")
    elif isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")


def _denominator(value: Count, like: torch.Tensor) -> torch.Tensor:
    # An empty batch has a zero numerator too; dividing by 1 gives 0 instead of NaN.
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(()).clamp_min(1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over mask-1 positions; 0 when there are none."""
    total = torch.where(mask, x, torch.zeros_like(x)).sum()
    return total / mask.sum().clamp_min(1).to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# Policy and value losses.


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate loss with separate low/high clip and an optional dual clip.

    PPO (Schulman et al. 2017) with the asymmetric "clip-higher" range of DAPO (Yu et al. 2025) and the
    dual clip of Ye et al. 2020 ("Mastering Complex Control in MOBA Games"). With
    ``rho = exp(logprobs - old_logprobs)`` (log ratio clamped to [-20, 20]):

        loss = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)
        if dual_clip and A < 0:  loss = min(loss, -dual_clip * A)

    Args:
        logprobs: (B, T) log-probabilities of the sampled tokens under the current policy (with grad).
        old_logprobs: (B, T) log-probabilities recorded at sampling time (behaviour policy).
        advantages: (B, T) per-token advantages.
        mask: (B, T) 1 at policy tokens, 0 elsewhere (bool, or 0/1 of any dtype).
        clip_low: epsilon below 1, in [0, 1).
        clip_high: epsilon above 1, >= 0 (DAPO uses a larger value than ``clip_low``).
        dual_clip: None to disable, else the cap constant c > 1 on ``rho`` for negative advantages.

    Returns:
        ``(per_token_loss, metrics)``: the (B, T) loss, 0 at mask-0 positions, and detached 0-d tensors,
        masked means over the policy tokens of this batch (0 when there are none): ``clipfrac`` (the
        ordinary clip is active: zero gradient), ``dual_clipfrac`` (the dual clip is active),
        ``approx_kl`` (k3 estimate of KL(old || new): ``rho - 1 - log rho``), ``ratio_mean``, and
        ``ratio_max`` (a max, 0 when there is no policy token).
    """
    m = _bool_mask(mask)
    for name, x in (("logprobs", logprobs), ("old_logprobs", old_logprobs), ("advantages", advantages)):
        _check_float_2d(name, x, m.shape)
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low: expected 0 <= clip_low < 1, got {clip_low!r}")
    if not clip_high >= 0.0:
        raise ValueError(f"clip_high: expected clip_high >= 0, got {clip_high!r}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip: expected None or a number > 1, got {dual_clip!r}")

    zeros = torch.zeros_like(logprobs)
    log_ratio = torch.where(m, logprobs - old_logprobs, zeros).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    adv = torch.where(m, advantages, zeros)
    ratio = torch.exp(log_ratio)
    surrogate = ratio * adv
    clipped_surrogate = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -torch.minimum(surrogate, clipped_surrogate)
    dual_active = torch.zeros_like(m)
    if dual_clip is not None:
        cap = -dual_clip * adv
        dual_active = (adv < 0) & (loss > cap)
        loss = torch.where(dual_active, cap, loss)
    loss = torch.where(m, loss, zeros)

    with torch.no_grad():
        metrics = {
            "clipfrac": _masked_mean((clipped_surrogate < surrogate).to(loss.dtype), m),
            "dual_clipfrac": _masked_mean(dual_active.to(loss.dtype), m),
            "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, m),
            "ratio_mean": _masked_mean(ratio, m),
            "ratio_max": torch.where(m, ratio, zeros).amax() if m.numel() else zeros.sum(),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped value loss, PPO2 style.

        V_clip = old_V + clip(V - old_V, -clip, clip)
        loss   = 0.5 * max((V - R)^2, (V_clip - R)^2)

    The 0.5 makes the gradient of the unclipped term exactly ``V - R`` (the usual MSE half), so a
    value-loss coefficient means the same thing as in the PPO paper (Schulman et al. 2017) and
    cleanrl/baselines. ``clip=None`` gives the plain ``0.5 * (V - R)^2``.

    Args:
        values: (B, T) current critic predictions (with grad).
        old_values: (B, T) predictions recorded before the update (the ones GAE used).
        returns: (B, T) regression targets.
        mask: (B, T) 1 at policy tokens, 0 elsewhere.
        clip: half-width of the trust region around ``old_values`` (> 0), or None.

    Returns:
        ``(per_token_loss, metrics)``: the (B, T) loss, 0 at mask-0 positions; metrics ``clipfrac``
        (fraction of policy tokens where the clipped term is the larger one, so the gradient is 0).
    """
    m = _bool_mask(mask)
    for name, x in (("values", values), ("old_values", old_values), ("returns", returns)):
        _check_float_2d(name, x, m.shape)
    if clip is not None and not clip > 0.0:
        raise ValueError(f"clip: expected None or a number > 0, got {clip!r}")

    zeros = torch.zeros_like(values)
    v = torch.where(m, values, zeros)
    r = torch.where(m, returns, zeros)
    unclipped = (v - r) ** 2
    if clip is None:
        loss, clipped_active = 0.5 * unclipped, torch.zeros_like(m)
    else:
        old = torch.where(m, old_values, zeros)
        clipped = (old + torch.clamp(v - old, -clip, clip) - r) ** 2
        loss, clipped_active = 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped
    loss = torch.where(m, loss, zeros)
    with torch.no_grad():
        metrics = {"clipfrac": _masked_mean(clipped_active.to(loss.dtype), m)}
    return loss, metrics


# ----------------------------------------------------------------------------------------------------
# KL to a reference policy.


def kl(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kind: str,
    *,
    mask: torch.Tensor | None = None,
    k3_max: float | None = K3_MAX,
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    With ``d = clamp(log pi_ref - log pi, -20, 20)`` (Schulman, "Approximating KL divergence", 2020):

    - ``k1 = -d``: unbiased, high variance, can be negative.
    - ``k2 = 0.5 * d^2``: biased, low variance, >= 0.
    - ``k3 = exp(d) - d - 1``: unbiased, >= 0 (DeepSeekMath GRPO, Shao et al. 2024), capped at ``k3_max``.

    The clamp on ``d`` keeps ``exp`` finite; the cap on k3 bounds one token's contribution, because k3
    grows like ``pi_ref/pi`` and a single token the policy has all but ruled out would otherwise swamp
    the batch (verl caps it at 10 too). Capped tokens get no KL gradient; ``k3_max=None`` removes the cap.

    Args:
        logprobs: (B, T) log-probabilities of the sampled tokens under the current policy.
        ref_logprobs: (B, T) the same tokens under the frozen reference policy.
        kind: one of ``k1``, ``k2``, ``k3``.
        mask: optional (B, T) 0/1 mask; when given, the output is 0 at mask-0 positions and values there
            reach neither output nor gradient.
        k3_max: per-token cap for k3 (> 0), or None.

    Returns:
        (B, T) per-token KL estimate.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind: expected one of {KL_KINDS}, got {kind!r}")
    m = None if mask is None else _bool_mask(mask)
    _check_float_2d("logprobs", logprobs, None if m is None else m.shape)
    _check_float_2d("ref_logprobs", ref_logprobs, logprobs.shape)
    if k3_max is not None and not k3_max > 0.0:
        raise ValueError(f"k3_max: expected None or a number > 0, got {k3_max!r}")

    d = ref_logprobs - logprobs
    if m is not None:
        d = torch.where(m, d, torch.zeros_like(d))
    d = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if kind == "k1":
        out = -d
    elif kind == "k2":
        out = 0.5 * d**2
    else:
        out = torch.exp(d) - d - 1.0
        if k3_max is not None:
            out = out.clamp(max=k3_max)
    return out


def tis_weights(
    logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, mask: torch.Tensor, *, cap: float
) -> torch.Tensor:
    """Truncated importance-sampling weights for a sampler/learner mismatch: ``min(pi / mu, cap)``.

    The sampler's log-probs ``behaviour_logprobs`` (mu: what the rollout engine actually sampled from,
    e.g. vLLM in bfloat16) and the learner's recomputed ``logprobs`` (pi_old: the same weights in the
    learner's kernels) differ; the policy loss uses pi_old as its ratio's denominator and weights each
    token's surrogate by ``w = min(exp(log pi_old - log mu), cap)``, the truncated importance sampling of
    Espeholt et al. 2018 (IMPALA's truncated rho) as applied to rollout/training mismatch by Yao et al.
    2025 ("Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"). The log ratio is
    clamped to [-20, 20] first; the weights carry no gradient.

    Args:
        logprobs: (B, T) the learner's log-probs of the sampled tokens under the sampling weights.
        behaviour_logprobs: (B, T) the sampler's recorded log-probs.
        mask: (B, T) 1 at policy tokens.
        cap: the truncation C >= 1.

    Returns:
        (B, T) weights in (0, cap], 0 at mask-0 positions.
    """
    m = _bool_mask(mask)
    _check_float_2d("logprobs", logprobs, m.shape)
    _check_float_2d("behaviour_logprobs", behaviour_logprobs, m.shape)
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not cap >= 1.0:
        raise ValueError(f"cap: expected a number >= 1, got {cap!r}")
    zero = torch.zeros_like(logprobs)
    d = torch.where(m, logprobs.detach() - behaviour_logprobs.detach(), zero)
    w = torch.exp(d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).clamp(max=cap)
    return torch.where(m, w, zero)


# ----------------------------------------------------------------------------------------------------
# Aggregation.


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: Count | None = None,
    num_seqs: Count | None = None,
    horizon: Count | None = None,
    seq_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    A row is a part of a sequence: in the learner a row is one **sub-trace** (one context window) and a
    sequence is its **episode**, so that compaction never changes an episode's weight (an episode split
    into three windows weighs what it would weigh unsplit; the original GRPO normalises per output, and
    an output here is an episode). ``seq_tokens`` says how many policy tokens the sequence of each row
    has over all its rows; without it every row is a sequence of its own.

    Modes (S_b = row b's sum of the masked loss, n_b = its policy-token count, N_b = ``seq_tokens[b]``,
    the policy tokens of row b's sequence; rows with n_b = 0 contribute 0):

    - ``token-mean`` (default; DAPO, Yu et al. 2025): ``sum_b S_b / num_tokens``.
    - ``seq-mean-token-mean`` (GRPO, Shao et al. 2024): ``sum_b (S_b / N_b) / num_seqs``: the mean over
      sequences of each sequence's token mean.
    - ``seq-mean-token-sum``: ``sum_b S_b / num_seqs``.
    - ``seq-mean-token-sum-norm`` (Dr. GRPO, Liu et al. 2025): ``sum_b S_b / (num_seqs * horizon)``.
    - ``subtrace-mean-token-mean``: ``seq-mean-token-mean`` with every row its own sequence whatever
      ``seq_tokens`` says (``sum_b (S_b / n_b) / num_seqs``, ``num_seqs`` counting rows): the
      per-window weighting, for comparison only. A compacted episode weighs more than the same episode
      uncompacted, and the tokens of a short window weigh more than those of a long one.

    Micro-batch invariance: the sum over micro-batches of ``aggregate`` equals the mini-batch value, and
    so do the gradients, when the denominators are the mini-batch's (summed over data-parallel ranks too):
    ``num_tokens`` (total policy tokens) for token-mean; ``num_seqs`` (sequences with a policy token) for
    the seq-mean modes, with ``seq_tokens`` counted over the whole mini-batch; ``num_seqs`` and
    ``horizon`` for seq-mean-token-sum-norm. Any split into micro-batches keeps the value, even one that
    puts a sequence's rows in different micro-batches; token-mean even allows splitting a row.
    Denominators a mode does not use are ignored.

    Args:
        per_token: (B, T) per-token loss; values at mask-0 positions are ignored (even NaN).
        mask: (B, T) 1 at policy tokens.
        mode: one of ``AGGREGATION_MODES``.
        num_tokens: global policy-token count; default ``mask.sum()`` of this batch.
        num_seqs: global count of sequences with a policy token; default ``sum_b n_b / N_b`` over this
            batch's rows (each sequence whose rows are all here counts 1); rows with a policy token for
            ``subtrace-mean-token-mean``.
        horizon: Dr. GRPO's constant length normaliser (e.g. the maximum response tokens per sub-trace);
            default ``T``, which is only invariant if every micro-batch is padded to the same ``T``.
        seq_tokens: (B,) policy tokens of each row's sequence (>= the row's own count); default each
            row's own count.

    Returns:
        0-d tensor. A denominator of 0 counts as 1, so an all-masked batch gives 0.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"mode: expected one of {AGGREGATION_MODES}, got {mode!r}")
    m = _bool_mask(mask)
    _check_float_2d("per_token", per_token, m.shape)
    for name, value in (("num_tokens", num_tokens), ("num_seqs", num_seqs), ("horizon", horizon)):
        _check_count(name, value)
    if horizon is not None and not isinstance(horizon, torch.Tensor) and horizon <= 0:
        raise ValueError(f"horizon: expected a number > 0, got {horizon!r}")

    row_sums = torch.where(m, per_token, torch.zeros_like(per_token)).sum(dim=-1)  # (B,)
    row_counts = m.sum(dim=-1)  # (B,)
    if mode == "token-mean":
        return row_sums.sum() / _denominator(row_counts.sum() if num_tokens is None else num_tokens, row_sums)

    lengths = row_counts if mode == "subtrace-mean-token-mean" else _seq_tokens(seq_tokens, row_counts)
    share = row_counts.to(row_sums.dtype) / lengths.clamp_min(1).to(row_sums.dtype)  # n_b / N_b
    seqs = _denominator(share.sum() if num_seqs is None else num_seqs, row_sums)
    if mode in ("seq-mean-token-mean", "subtrace-mean-token-mean"):
        return (row_sums / lengths.clamp_min(1).to(row_sums.dtype)).sum() / seqs
    if mode == "seq-mean-token-sum":
        return row_sums.sum() / seqs
    length = _denominator(m.shape[-1] if horizon is None else horizon, row_sums)
    return row_sums.sum() / (seqs * length)


def _seq_tokens(seq_tokens: torch.Tensor | None, row_counts: torch.Tensor) -> torch.Tensor:
    """``seq_tokens`` checked against the rows' own counts (a sequence holds at least its row's tokens)."""
    if seq_tokens is None:
        return row_counts
    if not isinstance(seq_tokens, torch.Tensor) or seq_tokens.shape != row_counts.shape:
        got = tuple(seq_tokens.shape) if isinstance(seq_tokens, torch.Tensor) else type(seq_tokens).__name__
        raise ValueError(f"seq_tokens: expected a tensor of shape {tuple(row_counts.shape)}, got {got}")
    seq_tokens = seq_tokens.to(row_counts.device)
    if not bool((seq_tokens >= row_counts).all()):
        raise ValueError("seq_tokens: each row's sequence must hold at least the row's own policy tokens")
    return seq_tokens


# ----------------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits.


def _logprobs_entropy_chunk(
    logits: torch.Tensor, token_ids: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # Work in at least float32; this is the single full-vocabulary upcast copy (none for fp32 input).
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(x, dim=-1)  # (B, t)
    logprobs = x.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logprobs, torch.empty(0, dtype=x.dtype, device=x.device)
    probs = torch.softmax(x, dim=-1)  # the one full-vocabulary float32 softmax
    # H = lse - sum_v p_v x_v. The product is a transient (freed after the sum; chunking bounds it); a
    # matmul would avoid it but runs in TF32 on GPUs where that is enabled, too coarse for an entropy.
    return logprobs, lse - (probs * x).sum(dim=-1)


def logprobs_and_entropy(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    with_entropy: bool = True,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each given token and the entropy of each position's distribution.

    No shift is applied: ``logits[:, t]`` scores ``token_ids[:, t]``. For a causal LM the caller passes
    ``logits[:, :-1]`` with ``token_ids[:, 1:]`` (the logits at position t-1 score token t). Apply any
    sampling temperature to ``logits`` first, so the result matches the sampler's log-probabilities.

    Computed in float32 (float64 stays float64) from one upcast copy of the logits and, for the entropy,
    one softmax: ``log p = x_tok - logsumexp(x)`` and ``H = logsumexp(x) - sum_v p_v x_v``. With
    ``chunk_size``, the time dimension is processed ``chunk_size`` positions at a time, so those copies
    are (B, chunk_size, V) instead of (B, T, V); when gradients are needed each chunk is recomputed in
    the backward pass (activation checkpointing), so nothing of size (B, T, V) in float32 is kept alive.

    Args:
        logits: (B, T, V) floating point (float32, bfloat16, float16 or float64).
        token_ids: (B, T) integer ids in [0, V).
        with_entropy: False skips the softmax and returns None for the entropy.
        chunk_size: positions per chunk (> 0), or None for all at once.

    Returns:
        ``(logprobs, entropy)``, each (B, T) in float32 (or float64), entropy None if not requested.
    """
    _check_logits(logits)
    if not isinstance(token_ids, torch.Tensor) or token_ids.shape != logits.shape[:2]:
        raise ValueError(f"token_ids: expected shape {tuple(logits.shape[:2])}, got {_describe(token_ids)}")
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise ValueError(f"token_ids: expected an integer tensor, got {token_ids.dtype}")
    # One host sync, worth it: an out-of-range id on a GPU is an unrecoverable device-side assert.
    if token_ids.numel() and not bool(((token_ids >= 0) & (token_ids < logits.shape[-1])).all()):
        raise ValueError(f"token_ids: expected ids in [0, {logits.shape[-1]})")
    bad_chunk = isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0
    if chunk_size is not None and bad_chunk:
        raise ValueError(f"chunk_size: expected None or an int > 0, got {chunk_size!r}")

    ids = token_ids.long()
    if chunk_size is None or chunk_size >= logits.shape[1]:
        logprobs, entropy = _logprobs_entropy_chunk(logits, ids, with_entropy)
        return logprobs, entropy if with_entropy else None
    recompute = torch.is_grad_enabled() and logits.requires_grad
    parts = []
    for start in range(0, logits.shape[1], chunk_size):
        args = (logits[:, start : start + chunk_size], ids[:, start : start + chunk_size], with_entropy)
        if recompute:
            parts.append(checkpoint(_logprobs_entropy_chunk, *args, use_reentrant=False))
        else:
            parts.append(_logprobs_entropy_chunk(*args))
    logprobs = torch.cat([p[0] for p in parts], dim=1)
    return logprobs, torch.cat([p[1] for p in parts], dim=1) if with_entropy else None


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, *, chunk_size: int | None = None
) -> torch.Tensor:
    """(B, T) log-probability of ``token_ids`` under ``logits`` (B, T, V); no shift (see
    ``logprobs_and_entropy``)."""
    return logprobs_and_entropy(logits, token_ids, with_entropy=False, chunk_size=chunk_size)[0]


def entropy_from_logits(logits: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """(B, T) entropy of the categorical distribution at each position of ``logits`` (B, T, V)."""
    _check_logits(logits)
    ids = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
    _, entropy = logprobs_and_entropy(logits, ids, chunk_size=chunk_size)
    if entropy is None:  # unreachable: with_entropy defaults to True; keeps the return type exact
        raise RuntimeError("entropy was not computed")
    return entropy


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point (B, T, V) tensor, got {_describe(logits)}")
    if logits.shape[-1] == 0:
        raise ValueError("logits: the vocabulary dimension V is empty")
