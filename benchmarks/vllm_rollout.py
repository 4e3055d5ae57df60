"""Rollout throughput of the vLLM backend against the torch backend on the same multi-turn graph_nav
episodes, side by side in one process (needs vLLM: run it with `.venv-vllm/bin/python`, see docs/vllm.md).

    OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/vllm_rollout.py                 # tiny model
    OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/vllm_rollout.py --size small --episodes 16

Both backends drive ``agentrl.runner.Runner`` over the same episodes (``KeepGoing`` graph_nav from
benchmarks/runner_throughput.py: a reply without a tool call is answered with a nudge, so every episode
runs ``--turns`` turns; no compaction), greedy, with interleaved repeats (the order alternates every
repeat; the median is reported). Reported: sampled tokens per second of each and their ratio vLLM/torch,
the fraction of episodes whose tokens are identical (greedy: they should all be), and vLLM's prefix-cache
hit rate over the measured repeats (tokens served from the cache over tokens queried), which shows that
a turn is charged only its new tokens. Ratios are the result; absolute speeds depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner_throughput import KeepGoing  # noqa: E402

from agentrl.chat import ChatFormat  # noqa: E402
from agentrl.compaction import CompactionConfig  # noqa: E402
from agentrl.models import init_model, load_model  # noqa: E402
from agentrl.rollout import TorchSampler  # noqa: E402
from agentrl.runner import Runner, RunnerConfig, Task  # noqa: E402
from agentrl.vllm_sampler import VLLMSampler, VLLMSettings  # noqa: E402


def prefix_cache_counts(sampler: VLLMSampler) -> tuple[float, float]:
    """(queried, hit) prefix-cache tokens so far, from the engine's metrics."""
    queries = hits = 0.0
    for metric in sampler.llm.get_metrics():
        if metric.name == "vllm:prefix_cache_queries":
            queries += float(metric.value)
        elif metric.name == "vllm:prefix_cache_hits":
            hits += float(metric.value)
    return queries, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--max-response-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_model(Path(tmp) / "model", size=args.size, seed=0)
        model, tokenizer = load_model(model_dir)
        model.eval()
        chat = ChatFormat(tokenizer)
        config = RunnerConfig(max_response_tokens=args.max_response_tokens, context_budget=4096,
                              max_turns=args.turns, max_concurrent=args.episodes, temperature=0.0,
                              compaction=CompactionConfig("none"))
        tasks = [Task(seed, f"g{seed}") for seed in range(args.episodes)]
        engine = VLLMSampler(model_dir, VLLMSettings(max_model_len=4096, cpu_kvcache_gib=1), log_stats=True)
        backends = {"torch": TorchSampler(model), "vllm": engine}

        def play(name: str) -> tuple[float, int, list]:
            start = time.perf_counter()
            result = Runner(backends[name], chat, config).run(lambda: KeepGoing(size="small"), tasks, seed=0)
            seconds = time.perf_counter() - start
            tokens = sum(e.num_policy_tokens for e in result.episodes)
            return seconds, tokens, [[st.token_ids for st in e.sub_traces] for e in result.episodes]

        play("torch"), play("vllm")  # warm-up: first-call costs of both
        before = prefix_cache_counts(engine)
        speeds: dict[str, list[float]] = {"torch": [], "vllm": []}
        same = []
        for r in range(args.repeats):
            order = ("torch", "vllm") if r % 2 == 0 else ("vllm", "torch")
            runs = {name: play(name) for name in order}
            for name, (seconds, tokens, _) in runs.items():
                speeds[name].append(tokens / seconds)
            same += [a == b for a, b in zip(runs["torch"][2], runs["vllm"][2], strict=True)]
        queried, hit = (after - b for after, b in zip(prefix_cache_counts(engine), before, strict=True))

    torch_speed, vllm_speed = (statistics.median(speeds[k]) for k in ("torch", "vllm"))
    print(f"model {args.size}, {args.episodes} episodes x {args.turns} turns, "
          f"{args.repeats} repeats (median)")
    print(f"torch backend: {torch_speed:,.0f} sampled tokens/s")
    print(f"vllm backend:  {vllm_speed:,.0f} sampled tokens/s")
    print(f"ratio vllm/torch: {vllm_speed / torch_speed:.2f}x")
    print(f"identical greedy episodes: {sum(same)}/{len(same)}")
    print(f"vllm prefix-cache hit rate: {hit / queried:.3f}" if queried else "vllm prefix cache: no queries")


if __name__ == "__main__":
    main()
