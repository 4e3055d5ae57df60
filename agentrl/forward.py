"""The model passes over a learner batch: the policy's log-probabilities and entropies and the critic's
values, aligned to tokens (``agentrl.batch``'s module docstring gives the convention), read with shared
prefixes once, and evaluated over many rows in micro-batches without grad.

    out = policy_logprobs(policy, batch)                       # with grad, one micro-batch
    values = evaluate_values(critic, rows, max_tokens=...)     # no grad, per row
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from agentrl.batch import Batch, Row, chosen_rows, collate, pack, unpad
from agentrl.hf_compat import cache_kwargs, output_cache
from agentrl.losses import logprobs_and_entropy


class PolicyModel(Protocol):
    """A causal LM, e.g. any Hugging Face ``*ForCausalLM``: returns (B, T, V) logits, or an object with
    a ``logits`` attribute, where position s scores the token after position s."""

    def __call__(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object: ...


class ValueModel(Protocol):
    """A critic: ``values = critic(input_ids, attention_mask)``, (B, T), where ``values[:, s]`` is the
    value of the state after reading tokens 0..s (so the value for token t is ``values[:, t - 1]``)."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class PolicyOutput:
    """Per-token outputs of the policy on a batch, aligned to tokens (0 at mask-0 positions and padding).

    Attributes:
        logprobs: (B, T) ``log pi(token t | tokens < t)``, float32 (float64 for a float64 model).
        entropy: (B, T) entropy of the distribution token t was drawn from, or None if not asked for.
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor | None


def policy_logprobs(
    policy: PolicyModel,
    batch: Batch,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    shared_prefix: int = 0,
) -> PolicyOutput:
    """Log-probabilities (and entropies) of the batch's tokens under ``policy``, aligned to tokens.

    One forward pass; the logits at position t - 1 score token t (``losses.logprobs_and_entropy`` on
    ``logits[:, :-1]`` and ``input_ids[:, 1:]``), so ``logprobs[:, t] = log_softmax(logits[:, t - 1] /
    temperature)[input_ids[:, t]]`` and column 0 is 0. Differentiable when grad is enabled; wrap in
    ``torch.no_grad()`` (or use ``evaluate_logprobs``) for reference or recomputed old log-probs.

    No full-vocabulary copy is made here beyond the one float32 upcast ``logprobs_and_entropy`` makes
    (per chunk with ``chunk_size``). The temperature divides the logits in place when they need no
    gradient, and out of place (one copy in the model's dtype) when they do.

    Args:
        policy: the causal LM (``PolicyModel``), on the batch's device.
        batch: the batch.
        temperature: the sampling temperature (>= 0; 0, greedy, means 1 as in ``agentrl.rollout``).
        with_entropy: also return the per-token entropy.
        chunk_size: positions per chunk for ``logprobs_and_entropy`` (bounds its float32 copies).
        shared_prefix: read the rows' shared prefixes once when they have at least this many tokens
            (``shared_prefix_forward``); 0: never. Only a Hugging Face model (``PreTrainedModel``) can;
            any other callable gets one full pass.

    Returns:
        ``PolicyOutput`` of (B, T) tensors.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
    if shared_prefix and isinstance(policy, PreTrainedModel):
        (logits,) = shared_prefix_forward(policy, batch.input_ids, batch.attention_mask,
                                          min_prefix=shared_prefix, outputs=lambda o: (o.logits,))
    else:
        out = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        logits = getattr(out, "logits", out)
        del out  # hold no second reference to the logits
    B, T = batch.shape
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != (B, T):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"policy: expected logits of shape ({B}, {T}, V), got {got}")
    if temperature not in (0, 1):
        logits = logits.div(temperature) if logits.requires_grad else logits.div_(temperature)
    logprobs, entropy = logprobs_and_entropy(
        logits[:, :-1], batch.input_ids[:, 1:], with_entropy=with_entropy, chunk_size=chunk_size
    )
    return PolicyOutput(
        _align(logprobs, batch.loss_mask), None if entropy is None else _align(entropy, batch.loss_mask)
    )


def critic_values(critic: ValueModel, batch: Batch, *, shared_prefix: int = 0) -> torch.Tensor:
    """Values of the states in which the batch's tokens were chosen, aligned to tokens.

    ``values[:, t] = critic(...)[:, t - 1]`` (see ``ValueModel``) at policy tokens, 0 elsewhere, column
    0 included. Differentiable when grad is enabled. ``shared_prefix`` > 0 is passed on to the critic
    (``critic(ids, mask, shared_prefix=...)``, as ``agentrl.critic``'s critics take it).

    Returns:
        (B, T) values in the critic's dtype.
    """
    if shared_prefix:
        out = critic(batch.input_ids, batch.attention_mask, shared_prefix=shared_prefix)  # type: ignore[call-arg]
    else:
        out = critic(batch.input_ids, batch.attention_mask)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != batch.shape or not out.is_floating_point():
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"critic: expected floating-point values of shape {batch.shape}, got {got}")
    return _align(out[:, :-1], batch.loss_mask)


def _align(x: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """(B, T-1) outputs for tokens 1..T-1 -> (B, T) aligned to tokens, 0 at column 0 and mask-0."""
    shifted = F.pad(x, (1, 0))
    return torch.where(loss_mask, shifted, torch.zeros_like(shifted))


# ----------------------------------------------------------------------------------------------------
# A micro-batch's common prefix, read once.


def common_prefix_length(input_ids: torch.Tensor, lengths: torch.Tensor) -> int:
    """How many leading tokens every row of a right-padded ``(B, T)`` batch shares, at most
    ``min(lengths) - 1`` so that every row keeps a token of its own; 0 for a single row."""
    cap = int(lengths.min()) - 1
    if input_ids.shape[0] < 2 or cap < 1:
        return 0
    differs = (input_ids[:, :cap] != input_ids[:1, :cap]).any(dim=0).nonzero()
    return cap if differs.numel() == 0 else int(differs[0])


def prefix_groups(input_ids: torch.Tensor, lengths: torch.Tensor, base: int) -> list[tuple[int, list[int]]]:
    """Rows of a right-padded batch that share more than their first ``base`` tokens (a GRPO group's task
    after the system prompt), grouped so that reading each group's prefix once saves the most tokens.

    The rows, sorted, form a trie; a run of rows whose neighbours share more than ``base`` tokens is one
    group at its common prefix, unless splitting it where the neighbours share least saves more
    (``(rows - 1) * (prefix - base)`` tokens per group). A prefix stops at ``length - 1`` so that every row
    keeps a token of its own. Returns ``(prefix length, rows)`` for each group of two or more rows.
    """
    caps = (lengths - 1).tolist()
    seqs = [input_ids[b, : caps[b]].tolist() for b in range(input_ids.shape[0])]
    order = sorted(range(len(seqs)), key=lambda b: seqs[b])
    links = [len(os.path.commonprefix([seqs[a], seqs[b]])) for a, b in zip(order, order[1:], strict=False)]

    def best(lo: int, hi: int) -> tuple[int, list[tuple[int, list[int]]]]:
        """The most tokens saved over rows ``order[lo..hi]``, and its groups."""
        if lo >= hi:
            return 0, []
        weakest = min(links[lo:hi])
        saved, groups, first = 0, [], lo
        for cut in [i for i in range(lo, hi) if links[i] == weakest] + [hi]:
            part_saved, part_groups = best(first, cut)
            saved, groups, first = saved + part_saved, groups + part_groups, cut + 1
        whole = (hi - lo) * (weakest - base)
        if weakest > base and whole >= saved:
            return whole, [(weakest, [order[i] for i in range(lo, hi + 1)])]
        return saved, groups

    return best(0, len(seqs) - 1)[1]


def _with_no_group_row(x: torch.Tensor, n0: int) -> torch.Tensor:
    """A cache tensor (G, H, n0 + M, D) of the groups, plus a last row for rows in no group: the common
    prefix's n0 columns, then M zeros (masked)."""
    blank = torch.cat([x[:1, :, :n0], x.new_zeros(1, x.shape[1], x.shape[2] - n0, x.shape[3])], dim=2)
    return torch.cat([x, blank])


def shared_prefix_forward(
    model: Callable[..., Any],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    min_prefix: int,
    outputs: Callable[[Any], tuple[torch.Tensor, ...]],
    **kwargs: Any,
) -> tuple[torch.Tensor, ...]:
    """``outputs(model(input_ids, attention_mask))``, with the prefixes the rows share read once.

    Rows of one environment start with the same system prompt and tool schemas, and a GRPO group's rows
    go on with the same task: in agent episodes that shared prefix is often half of every sub-trace. When
    the rows share at least ``min_prefix`` tokens, the model reads, with its key-value cache:

    1. the prefix common to all rows (``common_prefix_length``), once, as a batch of one;
    2. on top of it, the longer prefix of each group of rows (``prefix_groups``), once per group, left
       padded to the longest (only when this costs fewer padded tokens than step 3 saves);
    3. on top of its group's cache (or the common one), the rest of every row, right padded.

    Padding sits in the middle of some rows; the attention mask hides it and explicit position ids
    continue each row where its prefix ends, so no row's result changes. Each per-position output
    (``outputs`` picks them from the model's output, each ``(batch, positions, ...)``) is gathered back
    into the rows' own ``(B, T, ...)`` layout (values at padding positions are arbitrary, as in a full
    pass). Gradients flow through every pass, so a prefix's gradient is the sum over its rows, as in
    one full pass; the results equal a full pass up to float rounding (tests/test_batch.py).

    ``model`` must be a Hugging Face model that takes ``cache``, ``use_cache`` and ``position_ids`` and
    keeps a ``DynamicCache`` of full-attention layers (causal LMs and their base models do).
    ``min_prefix`` 0 (or shorter prefixes) means one ordinary full pass. ``kwargs`` go to every call
    (e.g. ``output_hidden_states=True``).
    """
    if isinstance(min_prefix, bool) or not isinstance(min_prefix, int) or min_prefix < 0:
        raise ValueError(f"min_prefix: expected an int >= 0, got {min_prefix!r}")
    B, T = input_ids.shape
    lengths = attention_mask.sum(dim=-1)
    n0 = common_prefix_length(input_ids, lengths) if min_prefix else 0
    groups = prefix_groups(input_ids, lengths, n0) if min_prefix and B > 1 else []
    starts = [n0] * B
    for prefix, rows in groups:
        for r in rows:
            starts[r] = prefix
    M = max((prefix - n0 for prefix, _ in groups), default=0)
    tail_width = max(int(n) - s for n, s in zip(lengths.tolist(), starts, strict=True))
    if groups and len(groups) * M + B * tail_width >= B * (T - n0):  # the groups' pass would not pay
        groups, starts, M, tail_width = [], [n0] * B, 0, T - n0
    if max([n0] + [prefix for prefix, _ in groups]) < max(min_prefix, 1):
        return outputs(model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs))

    device, G = input_ids.device, len(groups)
    pieces: list[tuple[torch.Tensor, ...]] = []  # every pass's outputs, flattened to (positions, ...)
    cache = None
    if n0:  # 1. the common prefix
        head = model(input_ids=input_ids[:1, :n0], use_cache=True, **kwargs)
        cache = output_cache(head)
        pieces.append(tuple(o[0] for o in outputs(head)))
    group_mask = torch.zeros(G + 1, M, dtype=attention_mask.dtype, device=device)  # last row: no group
    if G:  # 2. each group's prefix beyond the common one, left padded to M
        ids = torch.zeros(G, M, dtype=input_ids.dtype, device=device)
        for g, (prefix, rows) in enumerate(groups):
            k = prefix - n0
            ids[g, M - k :] = input_ids[rows[0], n0:prefix]
            group_mask[g, M - k :] = 1
        if cache is not None:
            cache.batch_repeat_interleave(G)
        mask = torch.cat([attention_mask.new_ones(G, n0), group_mask[:G]], dim=1)
        positions = n0 + (group_mask[:G].cumsum(dim=1) - 1).clamp(min=0)
        mid = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **cache_kwargs(model, cache), **kwargs)
        cache = output_cache(mid)
        pieces.append(tuple(o.flatten(0, 1) for o in outputs(mid)))
    # 3. the rest of every row, on its group's cache (rows in no group: the common prefix, then masked zeros)
    slot = [G] * B
    for g, (_, rows) in enumerate(groups):
        for r in rows:
            slot[r] = g
    slots = torch.tensor(slot, device=device)
    if cache is not None:
        for layer in cache.layers:
            if G:
                layer.keys, layer.values = (_with_no_group_row(x, n0)[slots]
                                            for x in (layer.keys, layer.values))
            else:
                layer.keys, layer.values = (x.expand(B, *x.shape[1:]) for x in (layer.keys, layer.values))
    ids = torch.zeros(B, tail_width, dtype=input_ids.dtype, device=device)
    tail_mask = torch.zeros(B, tail_width, dtype=attention_mask.dtype, device=device)
    for b, (n, start) in enumerate(zip(lengths.tolist(), starts, strict=True)):
        ids[b, : int(n) - start] = input_ids[b, start : int(n)]
        tail_mask[b, : int(n) - start] = 1
    mask = torch.cat([attention_mask.new_ones(B, n0), group_mask[slots], tail_mask], dim=1)
    positions = torch.tensor(starts, device=device)[:, None] + torch.arange(tail_width, device=device)
    tail = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                 **cache_kwargs(model, cache), **kwargs)
    pieces.append(tuple(o.flatten(0, 1) for o in outputs(tail)))

    # where each (row, position) of the full layout lies in the concatenated pieces
    index = torch.zeros(B, T, dtype=torch.long)
    tail_at = (n0 + G * M) + torch.arange(B)[:, None] * tail_width
    for b, (n, start) in enumerate(zip(lengths.tolist(), starts, strict=True)):
        index[b, :n0] = torch.arange(n0)
        if start > n0:
            g = slot[b]
            index[b, n0:start] = n0 + g * M + (M - (start - n0)) + torch.arange(start - n0)
        index[b, start : int(n)] = tail_at[b] + torch.arange(int(n) - start)
    index = index.to(device)
    return tuple(torch.cat(parts)[index] for parts in zip(*pieces, strict=True))


# ----------------------------------------------------------------------------------------------------
# Chunked evaluation without gradients.


@torch.no_grad()
def evaluate_logprobs(
    policy: PolicyModel,
    rows: Sequence[Row],
    *,
    max_tokens: int,
    temperature: float = 1.0,
    pad_id: int = 0,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    shared_prefix: int = 0,
) -> list[torch.Tensor]:
    """Per-row log-probabilities of many rows under ``policy`` (reference or recomputed old log-probs),
    micro-batch by micro-batch (``pack`` with ``max_tokens``), without gradients; ``shared_prefix`` as in
    ``policy_logprobs``.

    Returns:
        One (T_i,) tensor per row, in row order, on the row's device; 0 at mask-0 positions. Store them
        with ``set_fields(rows, ref_logprobs=...)``.
    """

    def run(batch: Batch) -> torch.Tensor:
        return policy_logprobs(policy, batch, temperature=temperature, chunk_size=chunk_size,
                               shared_prefix=shared_prefix).logprobs

    return _evaluate(rows, run, max_tokens=max_tokens, pad_id=pad_id, device=device)


@torch.no_grad()
def evaluate_values(
    critic: ValueModel,
    rows: Sequence[Row],
    *,
    max_tokens: int,
    pad_id: int = 0,
    device: torch.device | str | None = None,
    shared_prefix: int = 0,
) -> list[torch.Tensor]:
    """Per-row values of many rows under ``critic`` (the old values GAE uses), micro-batch by
    micro-batch (``pack`` with ``max_tokens``), without gradients; ``shared_prefix`` as in
    ``critic_values``.

    Returns:
        One (T_i,) tensor per row, in row order, on the row's device; 0 at mask-0 positions. Store them
        with ``set_fields(rows, old_values=...)``.
    """

    def run(batch: Batch) -> torch.Tensor:
        return critic_values(critic, batch, shared_prefix=shared_prefix)

    return _evaluate(rows, run, max_tokens=max_tokens, pad_id=pad_id, device=device)


@torch.no_grad()
def evaluate_end_values(
    critic: ValueModel,
    sequences: Sequence[Sequence[int]],
    *,
    max_tokens: int,
    pad_id: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The critic's value of the state after reading each whole sequence, without gradients.

    ``ValueModel``'s ``out[:, s]`` is the value after tokens 0..s, so this is ``out[b, len_b - 1]``: for
    a truncated episode's last sub-trace followed by its ``final_observation_ids``, the value of the
    state it stopped in (``ppo.truncation: bootstrap``). Sequences are right-padded into micro-batches
    of at most ``max_tokens`` padded tokens (at least one sequence each).

    Returns:
        (N,) values in the critic's dtype, on ``device`` (default: the critic's input device, CPU).
    """
    out: list[torch.Tensor] = []
    start = 0
    while start < len(sequences):
        stop, longest = start + 1, len(sequences[start])
        while stop < len(sequences) and (stop - start + 1) * max(longest, len(sequences[stop])) <= max_tokens:
            longest = max(longest, len(sequences[stop]))
            stop += 1
        chunk = sequences[start:stop]
        lengths = torch.tensor([len(x) for x in chunk])
        if bool((lengths < 1).any()):
            raise ValueError("sequences: expected at least one token in each")
        ids = torch.full((len(chunk), int(lengths.max())), pad_id, dtype=torch.long)
        for b, x in enumerate(chunk):
            ids[b, : len(x)] = torch.as_tensor(list(x), dtype=torch.long)
        attention = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        if device is not None:
            ids, attention, lengths = ids.to(device), attention.to(device), lengths.to(device)
        values = critic(ids, attention)
        out.append(values.gather(1, (lengths - 1)[:, None])[:, 0])
        start = stop
    return torch.cat(out) if out else torch.zeros(0)


def _evaluate(
    rows: Sequence[Row],
    run: Callable[[Batch], torch.Tensor],
    *,
    max_tokens: int,
    pad_id: int,
    device: torch.device | str | None,
) -> list[torch.Tensor]:
    """``run`` on each packed micro-batch (moved to ``device``), cut back into per-row tensors."""
    chosen_rows(rows, None)
    out: list[torch.Tensor | None] = [None] * len(rows)
    for mb in pack(rows, max_tokens=max_tokens):
        batch = collate(rows, mb.indices, pad_id=pad_id)
        result = run(batch if device is None else batch.to(device))
        for i, part in zip(mb.indices, unpad(result, batch), strict=True):
            out[i] = part.to(rows[i].token_ids.device)
    return out  # type: ignore[return-value]
