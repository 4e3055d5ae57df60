"""A lean decode step for the Qwen2 family: one new token per row, straight from the model's weights.

``TorchSampler`` decodes one token per row per forward. Through transformers, such a step calls some 60
modules for a four-layer model (each ``nn.Module.__call__``, the output dataclasses, the mask builder
``create_causal_mask``, the rotary-embedding module) and on a CPU that fixed cost is about twice the
step's arithmetic. ``Qwen2DecodeStep`` does the same arithmetic in one function of plain tensor ops:

- q, k and v come from one matrix multiply (the three weights concatenated), gate and up from another;
- cos and sin are read from a table of every position, computed once as the rotary module computes them
  (``position * inv_freq``, then ``cos``/``sin``), instead of per step;
- the padding mask is a boolean ``(B, 1, 1, T)`` view of the sampler's own mask, no causal mask is built
  (one query token attends to every real column);
- attention is ``scaled_dot_product_attention`` with the grouped query heads packed as transformers does
  for one query token (``(B, kv_heads, groups, D)`` against ``(B, kv_heads, T, D)``), so no key or value
  is repeated.

The keys and values are written through the cache layer's own ``update``, so the prefill (still
transformers' forward) and the decode steps share one cache. Everything else is the same sequence of
float operations as ``Qwen2ForCausalLM``'s forward with ``attn_implementation="sdpa"``; the tests check
greedy tokens identical and log-probs within 1e-5 in float32.

The fused weights are copies: they are rebuilt whenever a parameter changed in place (an optimiser step
bumps its version counter) or was replaced, so a learner's updates are seen by the next step.

``Qwen2DecodeStep.unsupported(model)`` says why a model cannot take this path (another architecture, a
subclass, another attention implementation or rotary type, forward hooks); the sampler then uses
transformers' forward, and says which path it took.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2Attention,
    Qwen2DecoderLayer,
    Qwen2MLP,
    Qwen2Model,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)

__all__ = ["Qwen2DecodeStep"]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``Qwen2RMSNorm.forward``: ``weight * (h * rsqrt(mean(h^2) + eps))`` with h in float32, in one
    kernel when the model is float32 (the same products: multiplication commutes)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.to(torch.float32), weight.shape, None, eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary_pos_emb`` for one tensor, ``x * cos + rotate_half(x) * sin``, where
    ``rotate_half(x) = cat(-x2, x1)``: written ``roll(x) * cat(-sin1, sin2)``, the same products (a
    negation is exact) in two ops instead of four."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


def _t(*weights: torch.Tensor) -> torch.Tensor:
    """The ``(out, in)`` weights stacked on ``out`` and transposed into a contiguous ``(in, out)`` copy:
    ``x @ w`` with such a copy runs about twice as fast on a CPU as ``F.linear(x, weight)``."""
    return torch.cat(weights).detach().t().contiguous()


def _has_hooks(module: torch.nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None)
        for m in module.modules()
    )


class Qwen2DecodeStep:
    """One decode step of a ``Qwen2ForCausalLM`` (sdpa attention, default rotary), with fused weights.

    Args:
        model: the model; ``unsupported(model)`` must be None.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        reason = self.unsupported(model)
        if reason is not None:
            raise ValueError(f"model: the lean decode step does not apply: {reason}")
        self.model = model
        config = model.config
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.eps = float(config.rms_norm_eps)
        self._key: tuple[Any, ...] | None = None
        self._layers: list[dict[str, torch.Tensor]] = []
        self._head = torch.empty(0)
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None

    @staticmethod
    def unsupported(model: torch.nn.Module) -> str | None:
        """Why ``model`` cannot take the lean step, or None when it can.

        Exact classes are required (a subclass may change any forward), so is what the step hard-codes:
        sdpa attention, the default rotary embedding, SiLU, full attention in every layer, no hooks.
        """
        if type(model) is not Qwen2ForCausalLM:
            return f"{type(model).__name__} is not Qwen2ForCausalLM"
        config = model.config
        inner = model.model
        if type(inner) is not Qwen2Model or type(inner.rotary_emb) is not Qwen2RotaryEmbedding:
            return "the inner model is not transformers' Qwen2Model"
        if type(inner.norm) is not Qwen2RMSNorm:
            return "the final norm is not Qwen2RMSNorm"
        for layer in inner.layers:
            if (type(layer) is not Qwen2DecoderLayer or type(layer.self_attn) is not Qwen2Attention
                    or type(layer.mlp) is not Qwen2MLP or type(layer.input_layernorm) is not Qwen2RMSNorm
                    or type(layer.post_attention_layernorm) is not Qwen2RMSNorm):
                return "a decoder layer is not transformers' Qwen2 layer"
        if getattr(config, "_attn_implementation", None) != "sdpa":
            return f"attn_implementation is {getattr(config, '_attn_implementation', None)!r}, not 'sdpa'"
        if config.hidden_act != "silu":
            return f"hidden_act is {config.hidden_act!r}, not 'silu'"
        if inner.rotary_emb.rope_type != "default" or inner.rotary_emb.attention_scaling != 1.0:
            return f"rope_type is {inner.rotary_emb.rope_type!r}, not 'default'"
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
            return "a layer uses sliding-window attention"
        if model.lm_head.bias is not None:
            return "the LM head has a bias"
        if _has_hooks(model):
            return "the model has forward hooks"
        return None

    def __call__(
        self, tokens_B: torch.Tensor, positions_B: torch.Tensor, mask_BT: torch.Tensor, layers: list[Any]
    ) -> torch.Tensor:
        """Encode one token per row and return the next-token logits, (B, V).

        Args:
            tokens_B: the token of each row, (B,) int64.
            positions_B: its position, (B,) int64.
            mask_BT: the cache's mask with this token's column included, (B, T), nonzero = real.
            layers: the cache's layers; each ``update(keys, values)`` appends one column and returns the
                layer's keys and values so far, (B, kv_heads, T, D).
        """
        model, d = self.model, self.head_dim
        b = tokens_B.shape[0]
        x = F.embedding(tokens_B, model.model.embed_tokens.weight)  # (B, H)
        assert self._cos is not None and self._sin is not None, "reserve() the positions first"
        cos = self._cos[positions_B].to(x.dtype)[:, None, :]  # (B, 1, D)
        sin = self._sin[positions_B].to(x.dtype)[:, None, :]
        attend = mask_BT.bool()[:, None, None, :]  # (B, 1, 1, T)
        nq, nkv = self.num_heads * d, self.num_kv_heads * d
        for w, layer in zip(self._layers, layers, strict=True):
            h = _rms_norm(x, w["norm1"], self.eps)
            qkv = torch.addmm(w["qkv_bias"], h, w["qkv"])
            qk = _rotate(qkv[:, : nq + nkv].view(b, -1, d), cos, sin)  # (B, heads + kv_heads, D)
            q = qk[:, : self.num_heads].reshape(b, self.num_kv_heads, -1, d)  # groups packed as queries
            k = qk[:, self.num_heads :, None, :]  # (B, kv_heads, 1, D)
            v = qkv[:, nq + nkv :].view(b, self.num_kv_heads, 1, d)
            keys, values = layer.update(k, v)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend, scale=d**-0.5)
            x = x + a.reshape(b, nq) @ w["o"]
            h = _rms_norm(x, w["norm2"], self.eps)
            gate, up = (h @ w["gate_up"]).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ w["down"]
        x = _rms_norm(x, model.model.norm.weight, self.eps)
        return x @ self._head

    def reserve(self, positions: int) -> None:
        """Make the rotary table cover positions ``0 .. positions - 1`` (call before the steps)."""
        have = 0 if self._cos is None else self._cos.shape[0]
        if have >= positions:
            return
        rotary = self.model.model.rotary_emb
        n = max(positions, 2 * have, 1024)  # grown geometrically: rebuilt a few times per sampler at most
        index = torch.arange(n, device=rotary.inv_freq.device)
        freqs = index[:, None].float() * rotary.inv_freq.float()  # as Qwen2RotaryEmbedding.forward
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        half = sin.shape[-1] // 2
        self._cos, self._sin = emb.cos(), torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def refresh(self) -> None:
        """Rebuild the fused weights if a parameter changed in place or was replaced since the last call;
        call it before the steps of every turn (the weights do not change within one)."""
        key = tuple((p.data_ptr(), p._version) for p in self.model.parameters())
        if key != self._key:
            self._layers = [self._fuse(layer) for layer in self.model.model.layers]
            self._head = _t(self.model.lm_head.weight)
            self._key = key

    @staticmethod
    def _fuse(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
        attn, mlp = layer.self_attn, layer.mlp
        return {
            "norm1": layer.input_layernorm.weight.detach(),
            "norm2": layer.post_attention_layernorm.weight.detach(),
            "qkv": _t(attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight),
            "qkv_bias": torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach(),
            "o": _t(attn.o_proj.weight),
            "gate_up": _t(mlp.gate_proj.weight, mlp.up_proj.weight),
            "down": _t(mlp.down_proj.weight),
        }
