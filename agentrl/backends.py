"""Which sampler a run rolls out with: ``rollout.backend`` (``torch`` or ``vllm``).

The runner drives any ``agentrl.sampling.Sampler``; this module picks one. The torch backend samples
with the policy object itself; the vLLM backend starts an engine on the policy's weights on disk (the
run's initial model, or the checkpoint it resumes from) and receives every update through
``agentrl.weight_sync.push_weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrl.config import VLLMSection
from agentrl.rollout import TorchSampler
from agentrl.sampling import Sampler


def make_sampler(
    backend: str, policy: Any, model_dir: str | Path, *, vllm: VLLMSection | None = None, seed: int
) -> Sampler:
    """The sampler of ``backend`` (``rollout.backend``): the torch one on ``policy``, or a vLLM engine with
    the ``vllm`` settings (``rollout.vllm``; default ones when None) on ``model_dir``, which must hold
    the same weights as ``policy``. A missing vLLM raises ``BackendUnavailable``."""
    match backend:
        case "torch":
            return TorchSampler(policy)
        case "vllm":
            from agentrl.vllm_sampler import VLLMSampler, VLLMSettings

            v = vllm or VLLMSection()
            settings = VLLMSettings(
                dtype=v.dtype, gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len,
                enable_prefix_caching=v.enable_prefix_caching, enforce_eager=v.enforce_eager,
                cpu_kvcache_gib=v.cpu_kvcache_gib,
            )
            return VLLMSampler(model_dir, settings, seed=seed)
    raise ValueError(f"backend: expected 'torch' or 'vllm', got {backend!r}")
