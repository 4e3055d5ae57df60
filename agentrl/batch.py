"""Batching for the learner: sub-traces as rows, right-padded batches, micro-batches packed by a token
budget, and the log-probabilities and values of a batch aligned to its tokens.

The flow (docs/design.md sections 2, 6 and 7):

    rows = rows_from_episodes(episodes)                      # one Row per sub-trace
    rows = set_fields(rows, old_values=evaluate_values(critic, rows, max_tokens=...))
    batch = collate(rows)                                    # everything at once, for GAE over episodes
    gae = episode_gae(batch.rewards, batch.old_values, batch.loss_mask, batch.episode_index, ...)
    rows = update_rows(rows, batch, advantages=gae.advantages, returns=gae.returns, loss_mask=gae.mask)
    n = policy_token_count(mini_batch_rows)                  # the token-mean denominator
    for mb in pack(mini_batch_rows, max_tokens=...):         # micro-batches with little padding
        b = collate(mini_batch_rows, mb.indices).to(device)
        out = policy_logprobs(policy, b)                     # with grad
        loss = aggregate(policy_loss(out.logprobs, b.old_logprobs, b.advantages, b.loss_mask, ...)[0],
                         b.loss_mask, num_tokens=n)
        loss.backward()                                      # summed micro-batch losses = mini-batch loss

Alignment, the one convention (tests/test_batch.py checks it against a direct computation):

- Every per-token tensor of a ``Row`` and of a ``Batch`` is indexed by token position: ``x[..., t]``
  refers to token t.
- The log-probability, entropy and value **for token t** come from the model's output at position
  t - 1: the state after reading tokens 0..t-1, in which token t was chosen. Token 0 has none, so it
  must be a prompt token (``loss_mask[0] == 0``); ``Row`` rejects anything else.
- A critic (``ValueModel``) returns ``(B, T)`` with ``out[:, s]`` the value of the state after reading
  tokens 0..s. So the value for token t is ``out[:, t - 1]``, exactly like the log-probability, and
  ``out[:, T - 1]`` (after the last token) is never used.
- Outputs at mask-0 positions (prompt, template, observation) and at padding are exactly 0. They are
  written with ``torch.where``, so whatever a model computed there (NaN included) reaches neither an
  output, nor an advantage, nor a gradient.

Choices that affect results:
- ``temperature`` divides the logits before the softmax, as ``agentrl.rollout`` does when sampling;
  ``temperature == 0`` (greedy sampling) means the temperature-1 distribution, as recorded there.
- ``pack`` is greedy over rows sorted by decreasing length: a micro-batch is padded to its first (longest)
  row and takes the next rows while ``rows * longest <= max_tokens``. A row longer than ``max_tokens``
  is a micro-batch alone, over the budget. Rows are never split or packed together into one row
  (``losses.aggregate``'s seq-mean modes need one sub-trace per row).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from agentrl.hf_compat import cache_kwargs, output_cache
from agentrl.losses import logprobs_and_entropy
from agentrl.types import Episode, SubTrace

# Per-token float fields a Row may carry besides its rewards and sampling-time log-probabilities;
# ``None`` until the learner fills them.
OPTIONAL_FIELDS = ("old_values", "advantages", "returns", "ref_logprobs", "tis_weights")
# Float fields that are 0 at mask-0 positions in a Batch (rewards are kept as recorded; padding is 0).
MASKED_FIELDS = ("old_logprobs", *OPTIONAL_FIELDS)


# ----------------------------------------------------------------------------------------------------
# Rows: one sub-trace each.


@dataclass(frozen=True, eq=False)
class Row:
    """One sub-trace as 1-D tensors of length T, with the episode and sub-trace it came from.

    Attributes:
        episode_index: which episode (its position in the list given to ``rows_from_episodes``).
        sub_trace_index: which sub-trace of that episode.
        token_ids: (T,) int64 token ids.
        loss_mask: (T,) bool, True at policy tokens; position 0 is always False (no model output scores
            it). The learner may narrow it (e.g. to ``GAEOutput.mask``).
        old_logprobs: (T,) sampling-time log-probabilities; 0 at mask-0 positions (``collate`` makes
            sure of it whatever is stored there).
        rewards: (T,) per-token rewards, sparse.
        old_values, advantages, returns, ref_logprobs: (T,) or None until filled (``set_fields``,
            ``update_rows``).
        tis_weights: (T,) truncated importance-sampling weights of a sampler/learner mismatch
            (``losses.tis_weights``), or None.
    """

    episode_index: int
    sub_trace_index: int
    token_ids: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    rewards: torch.Tensor
    old_values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    tis_weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        where = f"(episode {self.episode_index}, sub-trace {self.sub_trace_index})"
        for name in ("episode_index", "sub_trace_index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        ids = _vector("token_ids", self.token_ids, where)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"token_ids: expected an integer tensor, got {ids.dtype} {where}")
        if ids.numel() == 0:
            raise ValueError(f"token_ids: a row needs at least one token {where}")
        if bool((ids < 0).any()):
            raise ValueError(f"token_ids: expected ids >= 0 {where}")
        object.__setattr__(self, "token_ids", ids.long())
        object.__setattr__(self, "loss_mask", _row_mask(self.loss_mask, ids.numel(), where))
        for name in ("old_logprobs", "rewards", *OPTIONAL_FIELDS):
            value = getattr(self, name)
            if value is not None or name in ("old_logprobs", "rewards"):
                _check_float_vector(name, value, ids.numel(), where)

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def num_policy_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def replace(self, **changes: torch.Tensor | None) -> Row:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)


def _vector(name: str, x: object, where: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__} {where}")
    if x.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(x.shape)} {where}")
    return x


def _length(name: str, x: torch.Tensor, n: int, where: str) -> None:
    if x.numel() != n:
        raise ValueError(f"{name}: length {x.numel()} != len(token_ids) {n} {where}")


def _row_mask(mask: object, n: int, where: str) -> torch.Tensor:
    m = _vector("loss_mask", mask, where)
    _length("loss_mask", m, n, where)
    if m.dtype != torch.bool:
        if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"loss_mask: expected only 0 and 1 {where}")
        m = m != 0
    if bool(m[0]):
        raise ValueError(
            f"loss_mask: token 0 is marked as a policy token {where}, but no model output scores it "
            "(token t is scored by the output at t - 1); a row starts with prompt tokens"
        )
    return m


def _check_float_vector(name: str, x: object, n: int, where: str) -> None:
    v = _vector(name, x, where)
    _length(name, v, n, where)
    if not v.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {v.dtype} {where}")


def rows_from_episodes(episodes: Sequence[Episode], *, train_summaries: bool = True) -> list[Row]:
    """Flatten episodes into rows, one per sub-trace, episode by episode and in sub-trace order.

    That order is the one ``advantages.episode_gae`` needs (an episode's rows in sub-trace order).
    ``old_logprobs`` are float32 with 0 where ``SubTrace.logprobs`` is None; rewards are float32.

    Args:
        episodes: the episodes; ``Row.episode_index`` is the position in this sequence.
        train_summaries: False takes the policy-written summaries (``SubTrace.summary_start`` on) out of
            ``loss_mask``: no loss, and GAE skips them like observation tokens.

    Returns:
        The rows, ``sum(len(e.sub_traces) for e in episodes)`` of them.
    """
    rows = []
    for e, episode in enumerate(episodes):
        if not isinstance(episode, Episode):
            raise ValueError(f"episodes: item {e} is a {type(episode).__name__}, not an Episode")
        for s, sub in enumerate(episode.sub_traces):
            rows.append(
                Row(
                    episode_index=e,
                    sub_trace_index=s,
                    token_ids=torch.tensor(sub.token_ids, dtype=torch.long),
                    loss_mask=torch.tensor(_trained(sub, train_summaries), dtype=torch.bool),
                    old_logprobs=torch.tensor(
                        [0.0 if lp is None else lp for lp in sub.logprobs], dtype=torch.float32
                    ),
                    rewards=torch.tensor(sub.rewards, dtype=torch.float32),
                )
            )
    return rows


def _trained(sub: SubTrace, train_summaries: bool) -> Sequence[int]:
    """The sub-trace's loss mask, less its summary when summaries are not trained."""
    if train_summaries or sub.summary_start is None:
        return sub.loss_mask
    return (*sub.loss_mask[: sub.summary_start], *[0] * (sub.num_tokens - sub.summary_start))


def set_fields(rows: Sequence[Row], **per_row: Sequence[torch.Tensor]) -> list[Row]:
    """Copies of ``rows`` with per-token fields replaced: ``per_row[name][i]`` goes to row i.

    Example: ``set_fields(rows, old_values=evaluate_values(critic, rows, max_tokens=4096))``.
    """
    for name, values in per_row.items():
        if len(values) != len(rows):
            raise ValueError(f"{name}: {len(values)} tensors != {len(rows)} rows")
    return [row.replace(**{name: xs[i] for name, xs in per_row.items()}) for i, row in enumerate(rows)]


def policy_token_count(rows: Sequence[Row], indices: Iterable[int] | None = None) -> int:
    """Policy tokens of the rows (all, or those at ``indices``): the ``num_tokens`` of a mini-batch.

    Pass it as ``losses.aggregate(..., num_tokens=...)`` in every micro-batch of the mini-batch, so that
    the micro-batch losses sum to the mini-batch token-mean loss (docs/design.md section 7).
    """
    chosen = rows if indices is None else [rows[i] for i in indices]
    return sum(row.num_policy_tokens for row in chosen)


def episode_policy_tokens(rows: Sequence[Row]) -> dict[int, int]:
    """Policy tokens of each episode over its rows (``episode_index`` -> count): the ``seq_tokens`` of
    ``losses.aggregate``'s seq-mean modes, where a sequence is an episode. Pass whole episodes."""
    out: dict[int, int] = {}
    for row in rows:
        out[row.episode_index] = out.get(row.episode_index, 0) + row.num_policy_tokens
    return out


def policy_row_count(rows: Sequence[Row], indices: Iterable[int] | None = None) -> int:
    """Rows with at least one policy token: the ``num_seqs`` of a mini-batch for the seq-mean modes."""
    chosen = rows if indices is None else [rows[i] for i in indices]
    return sum(row.num_policy_tokens > 0 for row in chosen)


# ----------------------------------------------------------------------------------------------------
# Batches: rows right-padded to (B, T).


@dataclass(frozen=True, eq=False)
class Batch:
    """Rows right-padded to a common length T. Position t of every (B, T) tensor refers to token t.

    Attributes:
        input_ids: (B, T) int64, ``pad_id`` after each row's last token.
        attention_mask: (B, T) int64, 1 at real tokens, 0 at padding (what Hugging Face models take).
        loss_mask: (B, T) bool, True at policy tokens only (never at padding, never at t = 0).
        old_logprobs: (B, T) sampling-time log-probabilities; 0 at mask-0 positions and padding.
        rewards: (B, T) per-token rewards as recorded; 0 at padding.
        old_values, advantages, returns, ref_logprobs, tis_weights: (B, T) or None when the rows do not
            carry them; 0 at mask-0 positions and padding.
        lengths: (B,) int64, real tokens per row.
        episode_index: (B,) int64, each row's ``Row.episode_index``.
        sub_trace_index: (B,) int64, each row's ``Row.sub_trace_index``.
        row_index: (B,) int64, each row's position in the sequence given to ``collate``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    rewards: torch.Tensor
    old_values: torch.Tensor | None
    advantages: torch.Tensor | None
    returns: torch.Tensor | None
    ref_logprobs: torch.Tensor | None
    lengths: torch.Tensor
    episode_index: torch.Tensor
    sub_trace_index: torch.Tensor
    row_index: torch.Tensor
    tis_weights: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(B, T)."""
        return (int(self.input_ids.shape[0]), int(self.input_ids.shape[1]))

    @property
    def num_policy_tokens(self) -> torch.Tensor:
        """0-d tensor: policy tokens in this batch (a micro-batch's share, not the global normaliser)."""
        return self.loss_mask.sum()

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor moved to ``device``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = None if value is None else value.to(device)
        return Batch(**moved)


def collate(rows: Sequence[Row], indices: Sequence[int] | None = None, *, pad_id: int = 0) -> Batch:
    """Right-pad rows into a ``Batch`` (see ``Batch`` for what each field holds).

    An optional per-token field (``old_values``, ``advantages``, ``returns``, ``ref_logprobs``) must be
    set on every chosen row or on none; it is None in the batch when on none. Float fields take the
    promoted dtype of the rows' tensors.

    Args:
        rows: the rows.
        indices: which rows, in order (e.g. ``MicroBatch.indices``); default all. ``Batch.row_index``
            records them.
        pad_id: token id written at padding (>= 0; any id the model's vocabulary holds: the outputs there
            are masked).

    Returns:
        The batch, on the rows' device.
    """
    chosen, index = _choose(rows, indices)
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id: expected an int >= 0, got {pad_id!r}")
    lengths = torch.tensor([row.num_tokens for row in chosen], dtype=torch.long)
    T = int(lengths.max())
    real = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    loss_mask = _pad([row.loss_mask for row in chosen], False)
    floats: dict[str, torch.Tensor | None] = {"rewards": _pad_float([row.rewards for row in chosen])}
    for name in MASKED_FIELDS:
        present = [getattr(row, name) is not None for row in chosen]
        if not any(present):
            floats[name] = None
            continue
        if not all(present):
            count = f"{sum(present)} of {len(chosen)}"
            raise ValueError(f"{name}: set on {count} rows; set it on every row or none")
        x = _pad_float([getattr(row, name) for row in chosen])
        floats[name] = torch.where(loss_mask, x, torch.zeros_like(x))
    device = loss_mask.device

    def ints(xs: list[int]) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.long, device=device)

    return Batch(
        input_ids=_pad([row.token_ids for row in chosen], pad_id),
        attention_mask=real.long().to(device),
        loss_mask=loss_mask,
        lengths=lengths.to(device),
        episode_index=ints([row.episode_index for row in chosen]),
        sub_trace_index=ints([row.sub_trace_index for row in chosen]),
        row_index=ints(index),
        **floats,  # type: ignore[arg-type]
    )


def _choose(rows: Sequence[Row], indices: Sequence[int] | None) -> tuple[list[Row], list[int]]:
    if isinstance(rows, Row) or not isinstance(rows, Sequence):
        raise ValueError(f"rows: expected a sequence of Row, got {type(rows).__name__}")
    if len(rows) == 0:
        raise ValueError("rows: expected at least one row")
    index = list(range(len(rows))) if indices is None else list(indices)
    if not index:
        raise ValueError("indices: expected at least one row index")
    for i in index:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(rows):
            raise ValueError(f"indices: expected ints in [0, {len(rows)}), got {i!r}")
    chosen = [rows[i] for i in index]
    for i, row in zip(index, chosen, strict=True):
        if not isinstance(row, Row):
            raise ValueError(f"rows: item {i} is a {type(row).__name__}, not a Row")
    return chosen, index


def _pad(xs: list[torch.Tensor], value: float | bool) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(xs, batch_first=True, padding_value=value)


def _pad_float(xs: list[torch.Tensor]) -> torch.Tensor:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return _pad([x.to(dtype) for x in xs], 0.0)


def unpad(x: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
    """Cut a (B, T) tensor back into one (T_b,) tensor per row of ``batch``, in batch order."""
    if not isinstance(x, torch.Tensor) or tuple(x.shape[:2]) != batch.shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected shape {batch.shape} (the batch's (B, T)), got {got}")
    return [x[b, :n] for b, n in enumerate(batch.lengths.tolist())]


def update_rows(rows: Sequence[Row], batch: Batch, **per_token: torch.Tensor) -> list[Row]:
    """A copy of ``rows`` in which each row of ``batch`` (``rows[batch.row_index[b]]``) gets the
    (B, T) tensors of ``per_token`` cut to its length, moved to that row's device.

    Example, after GAE on ``batch = collate(rows)``:
    ``update_rows(rows, batch, advantages=gae.advantages, returns=gae.returns, loss_mask=gae.mask)``.
    """
    out = list(rows)
    split = {name: unpad(x, batch) for name, x in per_token.items()}
    for b, i in enumerate(batch.row_index.tolist()):
        device = out[i].token_ids.device
        out[i] = out[i].replace(**{name: parts[b].to(device) for name, parts in split.items()})
    return out


# ----------------------------------------------------------------------------------------------------
# Micro-batches: packing rows by a token budget.


@dataclass(frozen=True)
class MicroBatch:
    """Rows to collate together.

    Attributes:
        indices: the rows' positions in the sequence given to ``pack``, ascending.
        max_length: the longest row, to which ``collate`` pads the others.
        num_tokens: real tokens of the rows together.
    """

    indices: tuple[int, ...]
    max_length: int
    num_tokens: int

    @property
    def padded_tokens(self) -> int:
        """Slots of the padded (B, T) batch: ``len(indices) * max_length``."""
        return len(self.indices) * self.max_length


def pack(rows: Sequence[Row] | Sequence[int], *, max_tokens: int) -> list[MicroBatch]:
    """Pack rows into micro-batches whose padded size ``rows * longest row`` is at most ``max_tokens``.

    Greedy over the rows sorted by decreasing length (ties by position, so the result is
    deterministic): a micro-batch starts at the longest row left and takes the next ones while the
    padded size stays within the budget. Rows of similar length end up together, so padding stays
    small. A row longer than ``max_tokens`` is a micro-batch alone, over the budget (rows are never
    split). Micro-batches come longest first, so an out-of-memory error shows on the first one.

    Args:
        rows: the rows, or their lengths (ints >= 1).
        max_tokens: the budget of padded tokens per micro-batch, >= 1.

    Returns:
        The micro-batches; every row index appears in exactly one.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected an int >= 1, got {max_tokens!r}")
    lengths = [row.num_tokens if isinstance(row, Row) else row for row in rows]
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"rows: item {i} is neither a Row nor a length >= 1: {n!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [
        MicroBatch(tuple(sorted(g)), max_length=lengths[g[0]], num_tokens=sum(lengths[i] for i in g))
        for g in groups
    ]


def padding_fraction(micro_batches: Sequence[MicroBatch]) -> float:
    """Fraction of the padded slots that hold padding: ``1 - real tokens / padded tokens``; 0 if none."""
    padded = sum(mb.padded_tokens for mb in micro_batches)
    real = sum(mb.num_tokens for mb in micro_batches)
    return 0.0 if padded == 0 else 1.0 - real / padded


# ----------------------------------------------------------------------------------------------------
# Model outputs aligned to tokens.


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
    _choose(rows, None)
    out: list[torch.Tensor | None] = [None] * len(rows)
    for mb in pack(rows, max_tokens=max_tokens):
        batch = collate(rows, mb.indices, pad_id=pad_id)
        result = run(batch if device is None else batch.to(device))
        for i, part in zip(mb.indices, unpad(result, batch), strict=True):
            out[i] = part.to(rows[i].token_ids.device)
    return out  # type: ignore[return-value]
