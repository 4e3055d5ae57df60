"""hf_compat: the KV cache keyword is read from the model's forward, for old and new transformers."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import transformers

from agentrl.hf_compat import cache_kwargs, cache_name, output_cache


class Old:
    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs): ...


class New:
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs): ...


def test_the_name_comes_from_the_signature() -> None:
    assert cache_name(Old()) == "past_key_values" and cache_name(New()) == "cache"
    assert cache_kwargs(Old(), 7) == {"past_key_values": 7}
    assert cache_name(lambda **_: None) == "cache"  # no forward: the current name


def test_the_installed_transformers_model_agrees() -> None:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1,
    ))
    out = model(input_ids=torch.tensor([[1, 2]]), use_cache=True)
    assert output_cache(out) is not None
    name = cache_name(model)
    assert getattr(out, name) is output_cache(out)


def test_output_cache_reads_either_field() -> None:
    assert output_cache(SimpleNamespace(cache="new")) == "new"
    assert output_cache(SimpleNamespace(past_key_values="old")) == "old"
