"""Learner efficiency: the PPO update's FLOP rate against this machine's matrix-multiply rate, and padding.

    python benchmarks/learner_efficiency.py [--size tiny|small] [--episodes 16] [--repeats 3] [--threads 1]

The batch: expert episodes of graph_nav ``small`` played through the runner's teacher mode with
``policy`` compaction in a 1024-token window (``agentrl.sft.demonstrations``), so the rows are uneven
sub-traces (1 to 3 per episode, 200 to 1000 tokens) that all start with the same system prompt.

What is measured, side by side in one process:
- **matmul rate**: the median rate of ``torch.mm`` on 2048 x 2048 float32 matrices (the machine's
  attainable rate on ``--threads`` threads), and on the model's own shapes (tokens x hidden by hidden x
  intermediate), which is what a small model can get at best.
- **update**: one PPO update, the critic pass (``Learner.update_critic``) and the policy pass
  (``Learner.update_policy``): forward and backward of the separate critic and of the policy, one
  mini-batch, micro-batches of ``optim.micro_batch_tokens``. Timed ``--repeats`` times, median, with
  ``optim.shared_prefix`` 0 (every row read whole) and 16 (the default: a micro-batch's common prefix
  read once), interleaved.
- **counted FLOPs** of what each update computes, from the model calls it makes (recorded by forward
  hooks during an untimed update: each call's batch, new tokens and cache length, padding included):
  per token 2 x (the linear layers' weights) forward, attention 4 x hidden x (keys attended, causal),
  the LM head (policy) or value head (critic); backward twice the forward. Embedding lookups, norms and
  activations are not counted.
- **fraction** = counted FLOPs / seconds / the 2048 x 2048 matmul rate: how close the update runs to the
  floor this machine's matrix multiply sets. **tokens/s** = the batch's real tokens (no padding) / seconds.
- **padding** = padded slots / all slots of the micro-batches (``perf/padding_fraction``); target < 5%.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agentrl import sft
from agentrl.batch import Row, pack, padding_fraction, rows_from_episodes
from agentrl.chat import ChatFormat
from agentrl.config import load_config
from agentrl.critic import critic_from_policy
from agentrl.learner import Learner
from agentrl.models import init_model, load_model

ROOT = Path(__file__).resolve().parent.parent


def matmul_rate(m: int, k: int, n: int, *, repeats: int = 7) -> float:
    """Median FLOP/s of ``torch.mm`` of (m, k) by (k, n) float32 matrices (2 m k n FLOPs each)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    inner = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        times.append((time.perf_counter() - start) / inner)
    return 2 * m * k * n / statistics.median(times)


def forward_flops(config: Any, tokens: int, keys: int, *, lm_head: bool) -> float:
    """Counted forward FLOPs of ``tokens`` positions that attend to ``keys`` keys in total (summed over
    the positions): the linear layers, attention scores and mixing, and the LM head (else a value head)."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    linear = d * d + 2 * d * kv + d * d + 3 * d * f  # q, k, v, o projections and the gated MLP
    per_layer = 2 * tokens * linear + 4 * config.num_attention_heads * head_dim * keys
    head = 2 * tokens * (config.vocab_size * d if lm_head else d)
    return layers * per_layer + head


def counted_flops(learner: Learner, rows: Sequence[Row]) -> float:
    """Forward + backward FLOPs of one ``update_critic`` + ``update_policy`` on ``rows``, counted from the
    model calls the learner makes (their (batch, new tokens) shapes and cache lengths, padding included)."""
    calls: list[tuple[Any, int, int, int, bool]] = []

    def hook(lm_head: bool) -> Any:
        def record(module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            B, N = kwargs["input_ids"].shape
            cache = kwargs.get("cache")
            past = cache.get_seq_length() if cache is not None else 0
            calls.append((module.config, B, N, past, lm_head))
        return record

    handles = [learner.policy.register_forward_pre_hook(hook(True), with_kwargs=True),
               learner.critic.backbone.register_forward_pre_hook(hook(False), with_kwargs=True)]
    try:
        learner.update_critic(rows)
        learner.update_policy(rows)
    finally:
        for h in handles:
            h.remove()
    total = 0.0
    for config, B, N, past, lm_head in calls:
        keys = B * sum(past + i + 1 for i in range(N))  # causal: new token i attends to past + i + 1 keys
        total += 3 * forward_flops(config, B * N, keys, lm_head=lm_head)  # backward = 2 x forward
    return total


def build(size: str, episodes: int, work: Path) -> tuple[Any, Any, list[Any], Any]:
    model_dir = init_model(work / "model", size=size, seed=0)
    policy, tokenizer = load_model(model_dir)
    cfg = load_config(str(ROOT / "examples" / "ppo_graph_nav.yaml"), [
        "ppo.minibatches=1", "ppo.epochs=1", "ppo.critic_updates=1", "ppo.value_pretrain_steps=0",
        "rollout.max_turns=40", "rollout.max_compactions=8", "rollout.max_total_tokens=null",
        f"rollout.tasks_per_iteration={episodes}", "optim.micro_batch_tokens=4096",
    ])
    demos = sft.demonstrations("graph_nav", {"size": "small"}, sft.demo_seeds(episodes),
                               ChatFormat(tokenizer), cfg.to_runner_config())
    return cfg, policy, demos, policy.config


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=("tiny", "small"), help="default model size")
    p.add_argument("--episodes", type=int, default=16, help="graph_nav expert episodes in the batch")
    p.add_argument("--repeats", type=int, default=3, help="timed updates per setting (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, policy, episodes, config = build(args.size, args.episodes, Path(tmp))
    rows = rows_from_episodes(episodes)
    lengths = [r.num_tokens for r in rows]
    budget = cfg.optim.micro_batch_tokens
    micro = pack(rows, max_tokens=budget)
    peak = matmul_rate(2048, 2048, 2048)
    shaped = matmul_rate(2048, config.hidden_size, config.intermediate_size)

    results: dict[int, list[float]] = {0: [], 16: []}
    learners, flops = {}, {}
    for shared in results:
        c = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, shared_prefix=shared))
        copy = type(policy)(policy.config)
        copy.load_state_dict(policy.state_dict())
        copy.eval()
        learner = Learner(c, copy, critic=critic_from_policy(copy, seed=1), seed=0)
        learners[shared] = (learner, learner.prepare(episodes))
        flops[shared] = counted_flops(*learners[shared])  # also the warm-up
    for r in range(args.repeats):
        for shared in (results if r % 2 == 0 else reversed(list(results))):
            learner, prepared = learners[shared]
            start = time.perf_counter()
            learner.update_critic(prepared)
            learner.update_policy(prepared)
            results[shared].append(time.perf_counter() - start)

    real = sum(lengths)
    print(f"learner update (PPO: critic pass + policy pass, forward and backward), {args.size} model, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"batch: {len(episodes)} graph_nav small expert episodes, {len(rows)} sub-traces, {real} tokens, "
          f"lengths {min(lengths)}..{max(lengths)}; {len(micro)} micro-batches of <= {budget} tokens")
    print(f"padding fraction: {padding_fraction(micro):.4f} (target < 0.05)")
    print(f"matmul rate: {peak / 1e9:.1f} GFLOP/s at 2048x2048x2048, "
          f"{shaped / 1e9:.1f} GFLOP/s at 2048x{config.hidden_size}x{config.intermediate_size}")
    print(f"{'shared prefix':<15}{'median s':>10}{'tokens/s':>10}{'GFLOP':>8}{'GFLOP/s':>9}{'fraction':>10}")
    for shared, times in results.items():
        seconds, f = statistics.median(times), flops[shared]
        print(f"{shared:<15}{seconds:>10.3f}{real / seconds:>10.0f}{f / 1e9:>8.2f}"
              f"{f / seconds / 1e9:>9.1f}{f / seconds / peak:>10.3f}")
    base, fast = statistics.median(results[0]), statistics.median(results[16])
    print(f"speed-up of the shared prefix: {base / fast:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
