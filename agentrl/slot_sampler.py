"""A step-wise sampler for continuous batching: one KV-cache slot per lane, one token per row per step.

``TorchSampler.generate`` samples a whole turn for a batch and returns when its longest row is done.
``SlotSampler`` is driven one decode step at a time instead (``agentrl.continuous`` drives it): a session
that finishes its turn leaves the batch at once, and a session whose observation is ready joins the next
step, so no row waits for another's turn or tool.

Layout. Every lane (an episode in flight, ``agentrl.continuous``) owns one slot of a preallocated cache,
per layer keys and values ``(S, kv_heads, C, D)``, its tokens left-aligned at columns ``0 .. n - 1``
(position = column, no padding anywhere). A decode step runs all ``S`` slots at once through
``agentrl.decode_step.Qwen2DecodeStep``: every row writes its new key and value at its own column ``n_i``
and attends to columns ``0 .. n_i`` (a ``(S, L)`` boolean mask). Rows not generating (their session is
waiting for its tool, or no session) run too, on a dummy token whose key lands one column past their
tokens, where the next real token overwrites it; their logits are dropped. Running every slot keeps the
batch shape fixed, so a row's arithmetic never depends on which other rows are generating, or when: a
session's tokens and log-probs depend only on its own inputs and its seed, whatever the tools' timing.

Queues. As in ``TorchSampler``, a session's tokens not yet encoded wait in a queue (the prompt, or the
last sampled token followed by an observation). A step feeds each generating row the head of its queue;
when the queue is empty after that, the row samples from the step's logits. A queue longer than
``PREFILL_MIN`` tokens (a prompt, an observation after the last sampled token) is first encoded, all but
its last token, by one forward of the model for that row alone when the session joins (written into its
slot in place); a session whose prompt another slot already holds (a GRPO group's members) copies those
columns instead.

Sampling: ``agentrl.rollout.sample_tokens``, one uniform draw per sampled token from the session's own
``torch.Generator``, seeded from its turn's ``SamplingParams.seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from agentrl.decode_step import Qwen2DecodeStep
from agentrl.hf_compat import cache_kwargs
from agentrl.rollout import _BufferedLayer, sample_tokens
from agentrl.sampling import Generation, SamplingParams

__all__ = ["PREFILL_MIN", "SlotSampler"]

# A queue longer than this is encoded (all but its last token) by a forward of its own when its session
# joins; a shorter one is fed a token a step. Feeding an observation token by token delays the row by
# as many steps (a 20-token observation, 20 steps), which costs more than one forward of a row alone:
# benchmarks/continuous_batching.py measured 1.14x over static rounds with 8, 1.54x with 1.
PREFILL_MIN = 1
# Attention reads the slots' first columns up to a multiple of this: torch's CPU attention kernel rounds
# a row differently when the columns it reads end inside a block, so a width that followed the longest
# row would make a row's log-probs depend on the other rows' lengths (by ~1e-8); with whole blocks, the
# masked columns past a row's tokens add exact zeros and its result is the same for every width.
WIDTH_BLOCK = 256


@dataclass
class _SlotSession:
    """One session (one context window) in its lane's slot."""

    slot: int
    pending: list[int]
    prompt: tuple[int, ...]
    params: SamplingParams | None = None  # set while generating a turn
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class _SlotLayer:
    """A decode step's view of one layer's slots: ``update`` writes row i's key at column ``n_i``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                 width: int) -> None:
        self.keys, self.values, self.rows, self.columns, self.width = keys, values, rows, columns, width

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[self.rows, :, self.columns] = key_states[:, :, 0]
        self.values[self.rows, :, self.columns] = value_states[:, :, 0]
        return self.keys[:, :, : self.width], self.values[:, :, : self.width]


class SlotSampler:
    """Sessions in fixed slots, decoded step by step; see the module docstring.

    Args:
        model: a model the lean decode step applies to (``Qwen2DecodeStep.unsupported`` is None).
        slots: the number of lanes (episodes in flight at once).
        capacity: columns per slot (tokens of one context window, plus one); grown when a window needs
            more.
    """

    def __init__(self, model: torch.nn.Module, *, slots: int, capacity: int) -> None:
        reason = Qwen2DecodeStep.unsupported(model)
        if reason is not None:
            raise ValueError(f"model: continuous batching needs the lean decode step: {reason}")
        self.model = model
        self.step_fn = Qwen2DecodeStep(model)
        self.slots = slots
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        param = next(model.parameters())
        # the caches take their columns when the first session needs them: a sampler built and never
        # used (the trainer's own, when distributed.overlap samples with a copy) holds no memory
        self.initial_capacity = -(-capacity // WIDTH_BLOCK) * WIDTH_BLOCK
        shape = (slots, config.num_key_value_heads, 0, head_dim)
        self._keys = [param.new_zeros(shape) for _ in range(config.num_hidden_layers)]
        self._values = [param.new_zeros(shape) for _ in range(config.num_hidden_layers)]
        self._lengths = [0] * slots
        self._owner: list[int | None] = [None] * slots
        self._sessions: dict[int, _SlotSession] = {}
        self.num_steps = 0  # decode steps run, for metrics and tests
        self.decode_path = "lean"  # as TorchSampler's: every step takes the lean one (others are refused)
        self.num_encoded_tokens = 0

    @property
    def capacity(self) -> int:
        return self._keys[0].shape[2]

    # ---- sessions ---------------------------------------------------------------------------------------

    def open(self, session: int, prompt_ids: Sequence[int], slot: int) -> None:
        """Start ``session`` in ``slot`` (which must be free) from a non-empty prompt, queued."""
        if not prompt_ids:
            raise ValueError("prompt_ids: expected at least one token")
        if session in self._sessions:
            raise ValueError(f"session: {session} is already open")
        if self._owner[slot] is not None:
            raise ValueError(f"slot: {slot} is held by session {self._owner[slot]}")
        self._owner[slot] = session
        self._lengths[slot] = 0
        self.step_fn.refresh()  # weights updated since the last window are seen (a no-op otherwise)
        self._sessions[session] = _SlotSession(slot, list(prompt_ids), tuple(prompt_ids))

    def append(self, session: int, token_ids: Sequence[int]) -> None:
        """Queue observation tokens after what the session holds."""
        self._sessions[session].pending.extend(token_ids)

    def close(self, session: int) -> None:
        """Free the session's slot."""
        state = self._sessions.pop(session)
        self._owner[state.slot] = None

    def begin(self, session: int, params: SamplingParams) -> None:
        """Start sampling a turn for ``session``: it is in the batch from the next ``step``."""
        state = self._sessions[session]
        if state.params is not None:
            raise ValueError(f"session: {session} is already generating")
        state.params, state.tokens, state.logprobs = params, [], []
        state.generator = torch.Generator(device=self._keys[0].device)
        if params.seed is None:
            state.generator.seed()
        else:
            state.generator.manual_seed(params.seed)
        self._reserve(state.slot, len(state.pending) + params.max_new_tokens + 1)
        if len(state.pending) > PREFILL_MIN:
            self._prefill(state)

    @property
    def generating(self) -> int:
        """Sessions in the batch (sampling a turn)."""
        return sum(s.params is not None for s in self._sessions.values())

    # ---- one step -----------------------------------------------------------------------------------

    def step(self) -> list[tuple[int, Generation]]:
        """One decode step of every slot; returns the sessions whose turn ended with it."""
        rows = {s.slot: (sid, s) for sid, s in self._sessions.items() if s.params is not None}
        if not rows:
            return []
        device = self._keys[0].device
        tokens = [0] * self.slots
        for slot, (_, state) in rows.items():
            tokens[slot] = state.pending.pop(0)
        lengths = self._lengths
        width = -(-(max(lengths) + 1) // WIDTH_BLOCK) * WIDTH_BLOCK  # a multiple: see WIDTH_BLOCK
        columns_S = torch.tensor(lengths, device=device)
        mask_SL = torch.arange(width, device=device)[None, :] <= columns_S[:, None]
        all_rows = torch.arange(self.slots, device=device)
        layers = [_SlotLayer(k, v, all_rows, columns_S, width) for k, v in zip(self._keys, self._values,
                                                                                strict=True)]
        with torch.inference_mode():  # the lean step has no dropout: the model's train/eval mode is moot
            self.step_fn.reserve(width)
            logits_SV = self.step_fn(torch.tensor(tokens, device=device), columns_S, mask_SL, layers)
        self.num_steps += 1
        self.num_encoded_tokens += len(rows)
        for slot in rows:
            lengths[slot] += 1
        return self._sample(rows, logits_SV)

    def _sample(self, rows: dict[int, tuple[int, _SlotSession]], logits_SV: torch.Tensor
                ) -> list[tuple[int, Generation]]:
        """Sample for the rows whose queue is empty; end the turns that stop."""
        ready = [slot for slot, (_, s) in rows.items() if not s.pending]
        if not ready:
            return []
        params = rows[ready[0]][1].params
        assert params is not None
        uniforms = torch.stack([torch.rand((), generator=rows[slot][1].generator) for slot in ready]
                               ) if params.temperature > 0 else torch.zeros(len(ready))
        with torch.inference_mode():
            tokens_B, logprobs_B = sample_tokens(logits_SV[ready], params, uniforms)
        done = []
        for slot, token, logprob in zip(ready, tokens_B.tolist(), logprobs_B.tolist(), strict=True):
            sid, state = rows[slot]
            assert state.params is not None
            state.tokens.append(token)
            state.logprobs.append(logprob)
            state.pending = [token]  # encoded by the next step, or head of the next turn's queue
            stop = token in state.params.stop_token_ids
            if stop or len(state.tokens) >= state.params.max_new_tokens:
                done.append((sid, Generation(tuple(state.tokens), tuple(state.logprobs),
                                             "stop" if stop else "length")))
                state.params = state.generator = None
        return done

    # ---- prefill and room -----------------------------------------------------------------------------

    def _prefill(self, state: _SlotSession) -> None:
        """Encode all but the last queued token into the slot: copied from a slot holding the same
        prompt, else one forward of the model for this row alone."""
        slot, queue = state.slot, state.pending[:-1]
        start = self._lengths[slot]
        twin = self._twin(state) if start == 0 else None
        if twin is not None:
            for k, v in zip(self._keys, self._values, strict=True):
                k[slot, :, : len(queue)] = k[twin, :, : len(queue)]
                v[slot, :, : len(queue)] = v[twin, :, : len(queue)]
        else:
            self._forward_into(slot, start, queue)
        self._lengths[slot] = start + len(queue)
        state.pending = state.pending[-1:]

    def _twin(self, state: _SlotSession) -> int | None:
        """A slot whose session opened with the same prompt and has encoded at least all but its last
        token (its first columns are exactly what a prefill of this prompt writes)."""
        n = len(state.prompt) - 1
        for other in self._sessions.values():
            if other is not state and other.prompt == state.prompt and self._lengths[other.slot] >= n:
                return other.slot
        return None

    def _forward_into(self, slot: int, start: int, queue: list[int]) -> None:
        device = self._keys[0].device
        cache = DynamicCache(config=self.model.config)
        cache.layers = []
        for k, v in zip(self._keys, self._values, strict=True):
            layer = _BufferedLayer(self.capacity)
            layer._k, layer._v = k[slot : slot + 1], v[slot : slot + 1]  # views: written in place
            layer._length, layer.is_initialized, layer.device = start, True, device
            layer.keys, layer.values = layer._k[:, :, :start], layer._v[:, :, :start]
            cache.layers.append(layer)
        n = len(queue)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                self.model(
                    input_ids=torch.tensor([queue], device=device),
                    attention_mask=torch.ones(1, start + n, dtype=torch.long, device=device),
                    position_ids=torch.arange(start, start + n, device=device)[None, :],
                    use_cache=True, logits_to_keep=1, **cache_kwargs(self.model, cache),
                )
        finally:
            self.model.train(was_training)
        self.num_encoded_tokens += n

    def _reserve(self, slot: int, more: int) -> None:
        """Grow every slot's columns (doubling) so that ``slot`` has room for ``more`` tokens (and the
        dummy column past them)."""
        need = self._lengths[slot] + more + 1
        if need <= self.capacity:
            return
        grown = -(-max(need, 2 * self.capacity, self.initial_capacity) // WIDTH_BLOCK) * WIDTH_BLOCK
        for layers in (self._keys, self._values):
            for i, old in enumerate(layers):
                new = old.new_zeros(*old.shape[:2], grown, old.shape[3])
                new[:, :, : old.shape[2]] = old
                layers[i] = new
