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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

import torch

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
    chosen, index = chosen_rows(rows, indices)
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


def chosen_rows(rows: Sequence[Row], indices: Sequence[int] | None) -> tuple[list[Row], list[int]]:
    """The rows at ``indices`` (None: all) and their indices, after checking both (one-line errors)."""
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
