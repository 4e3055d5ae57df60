"""Sampling backends: the ``Sampler`` protocol and the local torch backend with a per-session KV cache.

A *session* is one context window (one sub-trace, docs/design.md, section 2). The runner drives it turn
by turn:

    sid = sampler.open(prompt_ids)              # queued, not yet encoded
    gen = sampler.generate([sid, ...], params)  # encode what is queued, then sample a turn
    sampler.append(sid, observation_ids)        # queued after the sampled tokens
    gen = sampler.generate([sid, ...], params)  # encodes only the last sampled token + the observation
    sampler.close(sid)

Data flow inside ``TorchSampler.generate`` (one call, all sessions batched):

1. Each session holds the keys/values of every token encoded so far (``c_i`` of them) and a queue of
   tokens not yet encoded (``n_i >= 1``: the prompt, or the last sampled token of the previous turn
   followed by the appended observation).
2. The caches are left-padded to a common length ``C = max c_i`` and stacked into one ``DynamicCache``;
   the queues are left-padded to ``N = max n_i``. A 2-D attention mask marks the padding and explicit
   ``position_ids`` continue each row at ``c_i``, so padding (which may sit in the middle of a row) never
   changes a row's result.
3. One prefill forward over the ``(B, N)`` queued tokens, then one forward per decode step for the whole
   batch, ``(B, 1)``. Sessions with no cache yet and the same queue (the members of a GRPO group, which
   share their prompt) are prefilled once and their cache copied. Rows stop on a stop token or at
   ``max_new_tokens``; a finished row's cache is cut out (dropping its padding columns) and the row
   leaves the batch.
   A decode step of a default (Qwen2) model goes through ``agentrl.decode_step.Qwen2DecodeStep``, the
   same arithmetic without transformers' module calls; any other model takes its own forward
   (``decode_path`` says which, ``lean_decode=False`` forces the forward).
4. The last sampled token of a turn is not encoded in that call: it becomes the head of the session's
   queue, so history is never re-encoded and nothing is encoded twice.

Sampling and the recorded log-probabilities:

- ``logprob`` is the log-probability of the token under the distribution it was sampled from:
  ``log_softmax(logits / temperature)[token]`` with ``top_p == 1``, the learner's recomputed quantity
  (same temperature, full vocabulary); with ``top_p < 1`` the renormalised nucleus,
  ``log_softmax(logits / temperature)[token] - log(kept mass)``. The recorded log-prob is the behaviour
  policy's, so under top-p the first importance ratio of a token is the nucleus mass (at most 1), not 1:
  the learner trains the full tempered distribution and corrects for having sampled a narrower one.
- ``temperature == 0`` is greedy decoding; its recorded log-probs are those of the temperature-1
  distribution.
- Randomness: one ``torch.Generator`` seeded from ``params.seed``; every sampling step draws one uniform
  number per row of the original batch (finished rows included) and samples by inverse CDF. Same seed and
  same inputs (same sessions in the same order) give the same tokens; a row's draws depend on its index
  and the batch size, so a sampled (non-greedy) session differs alone and in a batch.
  ``generate_without_cache`` (the slow reference that recomputes the whole sequence every step)
  consumes the same draws, so the two can be compared token for token.
- Logits are cast to float32 before the softmax, whatever the model's dtype.

The torch backend supports Hugging Face causal LMs whose ``DynamicCache`` has only full-attention
``DynamicLayer`` layers (Llama, Qwen2, Mistral without sliding window, ...). It uses the model it is given
by reference: weight updates made by the learner are seen by the next ``generate``, but caches of open
sessions were computed with the old weights, so close sessions before updating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from agentrl.decode_step import Qwen2DecodeStep
from agentrl.hf_compat import cache_kwargs
from agentrl.sampling import FinishReason, Generation, Sampler, SamplingParams, per_session

__all__ = [
    "FinishReason", "Generation", "Sampler", "SamplingParams", "TorchSampler", "generate_without_cache"
]


@dataclass
class _Session:
    """Private mutable state: per-layer keys/values ``(H, c, D)`` of the encoded tokens, and the queue."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0


class _BufferedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a preallocated buffer, written in place.

    ``DynamicLayer.update`` concatenates, copying the whole cache at every decode step; here a step
    writes its column into spare room (doubling the buffer when full), and ``keys``/``values`` are views
    of the filled part, so attention reads exactly what a ``DynamicLayer`` would hold.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_empty(b, h, self.capacity, d)
        self._v = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self._k is not None and self._v is not None
        n = key_states.shape[-2]
        if self._length + n > self._k.shape[-2]:
            grown = max(2 * self._k.shape[-2], self._length + n)
            self._k = torch.cat([self._k[:, :, : self._length], self._k.new_empty(
                *self._k.shape[:2], grown - self._length, self._k.shape[-1])], dim=-2)
            self._v = torch.cat([self._v[:, :, : self._length], self._v.new_empty(
                *self._v.shape[:2], grown - self._length, self._v.shape[-1])], dim=-2)
        self._k[:, :, self._length : self._length + n] = key_states
        self._v[:, :, self._length : self._length + n] = value_states
        self._length += n
        self.keys, self.values = self._k[:, :, : self._length], self._v[:, :, : self._length]
        return self.keys, self.values

    def fill(self, rows: list[tuple[torch.Tensor, torch.Tensor] | None], width: int) -> None:
        """Start from each row's (keys, values) of shape (H, c, D), right-aligned at ``width`` columns
        (zeros on the left, which the attention mask hides); None is a row with no cache yet."""
        ref = next(r for r in rows if r is not None)
        keys, values = ref
        self.lazy_initialization(
            keys.new_empty(len(rows), keys.shape[0], 0, keys.shape[-1]),
            values.new_empty(len(rows), values.shape[0], 0, values.shape[-1]),
        )
        assert self._k is not None and self._v is not None
        self._k[:, :, :width].zero_()
        self._v[:, :, :width].zero_()
        for i, row in enumerate(rows):
            if row is not None:
                c = row[0].shape[1]
                self._k[i, :, width - c : width] = row[0]
                self._v[i, :, width - c : width] = row[1]
        self._length = width
        self.keys, self.values = self._k[:, :, :width], self._v[:, :, :width]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None and self._v is not None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self._length], self._v[:, :, : self._length]


def sample_tokens(
    logits_BV: torch.Tensor, params: SamplingParams, uniforms_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row and its recorded log-prob.

    Args:
        logits_BV: next-token logits, (B, V), any float dtype (computed in float32).
        params: temperature and top_p are used.
        uniforms_B: one draw in [0, 1) per row, (B,); ignored when greedy.

    Returns:
        token ids (B,) int64 and their log-probs (B,) float32 under the distribution sampled from:
        ``log_softmax(logits / T)`` (T = 1 when greedy), renormalised to the nucleus when top_p < 1.
    """
    logits_BV = logits_BV.float()
    if params.temperature == 0.0:
        logp_BV = torch.log_softmax(logits_BV, dim=-1)
        tokens_B = logp_BV.argmax(dim=-1)
    else:
        logp_BV = torch.log_softmax(logits_BV / params.temperature, dim=-1)
        probs_BV = logp_BV.exp()
        if params.top_p < 1.0:
            probs_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
            # Keep a token while the mass strictly before it is below top_p (the top token always stays).
            before_BV = probs_BV.cumsum(dim=-1) - probs_BV
            probs_BV = probs_BV.masked_fill(before_BV >= params.top_p, 0.0)
        cdf_BV = probs_BV.cumsum(dim=-1)
        target_B1 = uniforms_B.to(cdf_BV).unsqueeze(-1) * cdf_BV[:, -1:]
        index_B = (
            torch.searchsorted(cdf_BV, target_B1, right=True).squeeze(-1).clamp_(max=cdf_BV.shape[-1] - 1)
        )
        if params.top_p < 1.0:
            tokens_B = order_BV.gather(-1, index_B[:, None]).squeeze(-1)
            # the nucleus renormalised: log p - log(kept mass), the distribution actually sampled from
            logp_BV = logp_BV - torch.log(cdf_BV[:, -1:])
        else:
            tokens_B = index_B
    logprobs_B = logp_BV.gather(-1, tokens_B[:, None]).squeeze(-1)
    return tokens_B, logprobs_B


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _prefill_groups(states: Sequence[_Session]) -> tuple[list[int], list[int]]:
    """The rows to prefill, and for every row the position of its prefilled twin among them: sessions
    with no cache yet and the same queue (a group's shared prompt) are encoded once."""
    reps: list[int] = []
    twin: list[int] = []
    seen: dict[tuple[int, ...], int] = {}
    for i, state in enumerate(states):
        key = tuple(state.pending) if state.length == 0 else None
        if key is not None and key in seen:
            twin.append(seen[key])
            continue
        if key is not None:
            seen[key] = len(reps)
        twin.append(len(reps))
        reps.append(i)
    return reps, twin


def _encode_ahead_rows(lengths: Sequence[int], eligible: Sequence[bool]) -> list[int]:
    """The rows whose queues (``lengths``) are cheaper to encode in a pass of their own: the eligible
    rows longer than a threshold t, picked to minimise the padded tokens of both passes, ``ahead *
    longest of them + rows * max(t, 1)``, against ``rows * longest`` for one pass; [] unless that saves
    at least half of the padded tokens (a pass of its own has a fixed cost too)."""
    rows, longest = len(lengths), max(lengths, default=0)
    best_cost, best = rows * longest, []
    floor = max([n for n, ok in zip(lengths, eligible, strict=True) if not ok], default=1)
    for t in sorted({n for n in lengths if n >= floor}):
        ahead = [i for i, n in enumerate(lengths) if n > t and eligible[i]]
        if not ahead:
            continue
        cost = len(ahead) * max(lengths[i] for i in ahead) + rows * max(t, 1)
        if cost < best_cost:
            best_cost, best = cost, ahead
    return best if best_cost <= rows * longest / 2 else []


def _left_pad(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists with id 0: ids (B, N) int64 and mask (B, N) int64, 1 = real token."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


class _Recorder:
    """Collects the sampled tokens of every row of the original batch and decides when rows stop."""

    def __init__(self, params: SamplingParams, limits: Sequence[int]) -> None:
        self.params, self.limits = params, list(limits)
        batch = len(self.limits)
        self.stop = frozenset(params.stop_token_ids)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.logprobs: list[list[float]] = [[] for _ in range(batch)]
        self.reasons: list[FinishReason | None] = [None] * batch

    def add(self, rows: Sequence[int], tokens_B: torch.Tensor, logprobs_B: torch.Tensor) -> list[bool]:
        """Record one step for ``rows`` (original indices); return which of them finished."""
        finished = []
        for row, tok, lp in zip(rows, tokens_B.tolist(), logprobs_B.tolist(), strict=True):
            self.tokens[row].append(tok)
            self.logprobs[row].append(lp)
            if tok in self.stop:
                self.reasons[row] = "stop"
            elif len(self.tokens[row]) >= self.limits[row]:
                self.reasons[row] = "length"
            finished.append(self.reasons[row] is not None)
        return finished

    def results(self) -> list[Generation]:
        return [
            Generation(tuple(t), tuple(lp), r or "length")
            for t, lp, r in zip(self.tokens, self.logprobs, self.reasons, strict=True)
        ]


class TorchSampler:
    """The local torch backend: batched sampling with each session's KV cache kept between turns.

    Args:
        model: a Hugging Face causal LM whose ``DynamicCache`` has only full-attention layers.
        lean_decode: decode with ``agentrl.decode_step.Qwen2DecodeStep`` where it applies (the same
            tokens and log-probs, a smaller fixed cost per step); False always uses transformers' forward.
            ``decode_path`` says which one the last ``generate`` took.
    """

    def __init__(self, model: torch.nn.Module, *, lean_decode: bool = True) -> None:
        layers = DynamicCache(config=model.config).layers
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            raise ValueError(
                "model: only full-attention DynamicCache layers are supported (no sliding window)"
            )
        self.model = model
        self.num_layers = len(layers)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self.num_encoded_tokens = 0  # real (non-padding) tokens fed to the model, for perf metrics and tests
        self.lean_decode = lean_decode
        self.decode_path: str | None = None  # "lean" or "transformers": the last generate's decode steps
        self._lean: Qwen2DecodeStep | None = None
        self._sessions: dict[int, _Session] = {}
        self._next_id = 0

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    def open(self, prompt_ids: Sequence[int]) -> int:
        """Start a session from a non-empty prompt; nothing is encoded until ``generate``."""
        if len(prompt_ids) == 0:
            raise ValueError("prompt_ids: expected at least one token")
        self._check_ids("prompt_ids", prompt_ids)
        sid = self._next_id
        self._next_id += 1
        self._sessions[sid] = _Session(pending=list(prompt_ids))
        return sid

    def append(self, session: int, token_ids: Sequence[int]) -> None:
        """Queue observation tokens; the next ``generate`` encodes them together with the new turn."""
        self._check_ids("token_ids", token_ids)
        self._get(session).pending.extend(token_ids)

    def close(self, session: int) -> None:
        """Drop a session and its cache."""
        self._get(session)
        del self._sessions[session]

    def num_tokens(self, session: int) -> int:
        """Tokens in the session's context window so far: encoded plus queued."""
        state = self._get(session)
        return state.length + len(state.pending)

    def generate(
        self, sessions: Sequence[int], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[Generation]:
        """Sample one turn for every session in one batch; see the module docstring for the data flow.

        Per-session ``params`` must agree on everything but ``max_new_tokens`` (each row stops at its own).
        """
        if len(set(sessions)) != len(sessions):
            raise ValueError(f"sessions: duplicate session ids in {list(sessions)}")
        states = [self._get(s) for s in sessions]
        if not states:
            return []
        each = per_session(params, len(states))
        shared = each[0]
        for p in each[1:]:
            if replace(p, max_new_tokens=shared.max_new_tokens) != shared:
                raise ValueError("params: per-session params may differ in max_new_tokens only")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                recorder = self._decode(states, shared, [p.max_new_tokens for p in each])
        finally:
            self.model.train(was_training)
        results = recorder.results()
        for state, gen in zip(states, results, strict=True):
            state.pending = [gen.token_ids[-1]]
        return results

    def _decode_step(self) -> Qwen2DecodeStep | None:
        """The lean decode step when it applies to the model as it is now (hooks may come and go), else
        None (transformers' forward); sets ``decode_path``."""
        if self.lean_decode and Qwen2DecodeStep.unsupported(self.model) is None:
            if self._lean is None:
                self._lean = Qwen2DecodeStep(self.model)
            self.decode_path = "lean"
            return self._lean
        self.decode_path = "transformers"
        return None

    def _decode(self, states: list[_Session], params: SamplingParams, limits: list[int]) -> _Recorder:
        """Prefill the queues, then decode step by step, row i for at most ``limits[i]`` tokens; fills each
        session's cache as its row stops."""
        device = self.device
        step = self._decode_step()
        generator = _make_generator(params.seed, device)
        recorder = _Recorder(params, limits)
        self._encode_ahead(states)
        capacity = max(s.length for s in states) + max(len(s.pending) for s in states) + max(limits)
        if step is not None:
            step.refresh()
            step.reserve(capacity)  # no position exceeds the longest row's tokens
        # Sessions that start from the same prompt (a GRPO group's) are prefilled once, then copied.
        reps, twin = _prefill_groups(states)
        unique = [states[i] for i in reps]
        cache, mask_BT, positions_B, logits_BV = self._prefill(unique, [s.pending for s in unique], capacity)
        if len(unique) < len(states):
            index = torch.tensor(twin, device=device)
            cache.batch_select_indices(index)
            mask_BT, positions_B, logits_BV = mask_BT[index], positions_B[index], logits_BV[index]
        rows = list(range(len(states)))  # original index of each row still in the batch
        while True:
            uniforms = torch.rand(len(states), generator=generator, device=device)
            tokens_B, logprobs_B = sample_tokens(logits_BV, params, uniforms[rows])
            finished = recorder.add(rows, tokens_B, logprobs_B)
            if any(finished):
                for r, done in enumerate(finished):
                    if done:
                        self._store(states[rows[r]], cache, mask_BT, r)
                keep = [r for r, done in enumerate(finished) if not done]
                if not keep:
                    return recorder
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask_BT, positions_B, tokens_B = mask_BT[index], positions_B[index], tokens_B[index]
                rows = [rows[r] for r in keep]
            mask_BT = torch.cat([mask_BT, mask_BT.new_ones(len(rows), 1)], dim=1)
            self.num_encoded_tokens += len(rows)
            if step is not None:
                logits_BV = step(tokens_B, positions_B, mask_BT, cache.layers)
            else:
                logits_BV = self._forward(tokens_B[:, None], mask_BT, positions_B[:, None], cache)
            positions_B = positions_B + 1

    def _encode_ahead(self, states: list[_Session]) -> None:
        """Encode the queues much longer than the rest of the batch's on their own, all but their last
        token, so that the batched prefill is padded to the short queues only.

        A window resumed after a compaction queues its whole context (prompt, summary, kept turns:
        hundreds of tokens) while the other sessions queue an observation; prefilled together, every row
        would be padded to the long one. ``_encode_ahead_rows`` picks the rows whose separate pass costs
        fewer padded tokens; sessions that share a prompt with another are left to ``_prefill_groups``.
        """
        _, twin = _prefill_groups(states)
        alone = [twin.count(twin[i]) == 1 for i in range(len(states))]
        ahead = _encode_ahead_rows([len(s.pending) for s in states], alone)
        if not ahead:
            return
        group = [states[i] for i in ahead]
        capacity = max(s.length for s in group) + max(len(s.pending) for s in group)
        cache, mask_BT, _, _ = self._prefill(group, [s.pending[:-1] for s in group], capacity)
        for row, state in enumerate(group):
            self._store(state, cache, mask_BT, row)
            state.pending = state.pending[-1:]

    def _prefill(
        self, states: list[_Session], queues: list[list[int]], capacity: int
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode ``queues[i]`` after session i's cache, all rows in one forward (caches and queues left
        padded). Returns the batched cache, its mask (B, T), each row's next position (B,) and the logits
        of each row's last column (B, V)."""
        cache, mask_BT, positions_B = self._batch_cache(states, capacity)
        ids_BN, new_mask_BN = _left_pad(queues, self.device)
        mask_BT = torch.cat([mask_BT, new_mask_BN], dim=1)
        position_ids_BN = (positions_B[:, None] + new_mask_BN.cumsum(dim=1) - 1).clamp_(min=0)
        self.num_encoded_tokens += sum(len(q) for q in queues)
        logits_BV = self._forward(ids_BN, mask_BT, position_ids_BN, cache)
        return cache, mask_BT, positions_B + new_mask_BN.sum(dim=1), logits_BV

    def _forward(
        self, ids_BN: torch.Tensor, mask_BT: torch.Tensor, position_ids_BN: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """One forward of the whole batch; returns the logits of the last column, (B, V)."""
        out = self.model(
            input_ids=ids_BN,
            attention_mask=mask_BT,
            position_ids=position_ids_BN,
            use_cache=True,
            **cache_kwargs(self.model, cache),
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def _batch_cache(
        self, states: list[_Session], capacity: int
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """Stack the sessions' caches, left-padded to the longest, into buffers of ``capacity`` columns.

        Returns:
            the batched cache (B, H, C, D) per layer, its mask (B, C) int64 (1 = real), and each row's
            next position (B,) int64.
        """
        device = self.device
        lengths = [s.length for s in states]
        width = max(lengths)
        mask_BC = torch.zeros(len(states), width, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask_BC[i, width - n :] = 1
        cache = DynamicCache(config=self.model.config)
        cache.layers = [_BufferedLayer(capacity) for _ in range(self.num_layers)]
        if width > 0:
            for index, layer in enumerate(cache.layers):
                layer.fill([(s.keys[index], s.values[index]) if s.length else None for s in states], width)
        return cache, mask_BC.to(device), torch.tensor(lengths, dtype=torch.long, device=device)

    def _store(self, state: _Session, cache: DynamicCache, mask_BT: torch.Tensor, row: int) -> None:
        """Cut row ``row`` out of the batched cache, dropping its padding columns, into ``state``."""
        real_T = mask_BT[row].bool()
        state.keys = [layer.keys[row][:, real_T] for layer in cache.layers]
        state.values = [layer.values[row][:, real_T] for layer in cache.layers]

    def _get(self, session: int) -> _Session:
        if session not in self._sessions:
            raise ValueError(f"session: no open session with id {session!r}")
        return self._sessions[session]

    def _check_ids(self, name: str, token_ids: Sequence[int]) -> None:
        if any(not isinstance(t, int) or not 0 <= t < self.vocab_size for t in token_ids):
            raise ValueError(f"{name}: expected ints in [0, {self.vocab_size}), got {list(token_ids)}")


def generate_without_cache(
    model: torch.nn.Module, contexts: Sequence[Sequence[int]], params: SamplingParams
) -> list[Generation]:
    """The slow reference: sample like ``TorchSampler.generate`` but re-encode every full context each step.

    Same random draws as the cached path (one uniform per original row per step), so with the same
    seed the two agree token for token up to float rounding. Used by tests and benchmarks.

    Args:
        model: a Hugging Face causal LM.
        contexts: each row's whole context so far (prompt, earlier turns and observations).
        params: sampling parameters.
    """
    if not contexts or any(len(c) == 0 for c in contexts):
        raise ValueError("contexts: expected at least one non-empty context")
    device = next(model.parameters()).device
    generator = _make_generator(params.seed, device)
    recorder = _Recorder(params, [params.max_new_tokens] * len(contexts))
    sequences = [list(c) for c in contexts]
    rows = list(range(len(contexts)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            while rows:
                ids_BT, mask_BT = _left_pad([sequences[r] for r in rows], device)
                position_ids_BT = (mask_BT.cumsum(dim=1) - 1).clamp_(min=0)
                logits_BV = model(
                    input_ids=ids_BT, attention_mask=mask_BT, position_ids=position_ids_BT
                ).logits
                uniforms = torch.rand(len(contexts), generator=generator, device=device)
                tokens_B, logprobs_B = sample_tokens(logits_BV[:, -1, :], params, uniforms[rows])
                finished = recorder.add(rows, tokens_B, logprobs_B)
                for r, tok in zip(rows, tokens_B.tolist(), strict=True):
                    sequences[r].append(tok)
                rows = [r for r, done in zip(rows, finished, strict=True) if not done]
    finally:
        model.train(was_training)
    return recorder.results()
