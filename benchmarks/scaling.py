"""Scaling: how rollout and update time grow with longer episodes and with bigger batches.

    python benchmarks/scaling.py [--turns 8] [--episodes 8] [--repeats 2] [--threads 1]

Five workloads, each from the same fresh tiny model: the base (``--turns`` turns per episode,
``--episodes`` episodes per batch), episodes 2x and 4x longer (more turns, so more sub-traces: the
``policy`` compaction strategy in a 1024-token window), and batches 2x and 4x bigger. For each:

- **rollout**: ``Runner.run`` over ``TorchSampler``, all episodes in one batch, temperature 1. The env is
  graph_nav ``small`` where a reply without a tool call is answered "Call a tool." (``KeepGoing``, from
  ``runner_throughput.py``), so a random model's episodes run their full number of turns.
- **update**: one PPO update on those episodes: ``Learner.prepare`` (critic values, GAE), the critic
  pass and the policy pass, one mini-batch, micro-batches of 4096 tokens, shared prefix on (default).

Each figure is reported against the base (``forwards``: the model calls of the rollout, a prefill or
a decode step of the whole batch): time ratio, token ratio (sampled tokens for the rollout, all
tokens of the sub-traces for the update), and their quotient, the **time per token relative to the
base**: 1.00 is exactly linear in tokens, below 1 better than linear (batching amortises the per-step
cost). Target: close to linear (at most about 1.2). Workloads are interleaved, ``--repeats`` times after
a warm-up, and the medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from runner_throughput import KeepGoing

from agentrl.chat import ChatFormat
from agentrl.config import load_config
from agentrl.critic import critic_from_policy
from agentrl.learner import Learner
from agentrl.models import init_model, load_model
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner, Task

ROOT = Path(__file__).resolve().parent.parent


def config(turns: int, episodes: int) -> Any:
    return load_config(str(ROOT / "examples" / "ppo_graph_nav.yaml"), [
        f"rollout.max_turns={turns}", "rollout.max_total_tokens=null", "rollout.max_compactions=1000",
        "rollout.max_response_tokens=32", f"rollout.max_concurrent={episodes}",
        f"rollout.tasks_per_iteration={episodes}", "ppo.minibatches=1", "ppo.epochs=1",
        "ppo.value_pretrain_steps=0", "optim.micro_batch_tokens=4096",
    ])


def measure(model_dir: Path, turns: int, episodes: int) -> dict[str, float]:
    """One rollout and one PPO update of ``episodes`` episodes of ``turns`` turns, from the fresh model."""
    policy, tokenizer = load_model(model_dir)
    policy.eval()
    cfg = config(turns, episodes)
    runner = Runner(TorchSampler(policy), ChatFormat(tokenizer), cfg.to_runner_config())
    tasks = [Task(seed=s, group_id=str(s)) for s in range(episodes)]
    forwards = []
    hook = policy.register_forward_pre_hook(lambda *_: forwards.append(1))
    start = time.perf_counter()
    result = runner.run(lambda: KeepGoing(size="small"), tasks, seed=0)
    rollout = time.perf_counter() - start
    hook.remove()
    if result.failures or len(result.episodes) != episodes:
        raise RuntimeError(f"rollout: {len(result.failures)} tasks failed")
    learner = Learner(cfg, policy, critic=critic_from_policy(policy, seed=1), seed=0)
    start = time.perf_counter()
    rows = learner.prepare(result.episodes)
    learner.update_critic(rows)
    learner.update_policy(rows)
    update = time.perf_counter() - start
    eps = result.episodes
    return {
        "rollout_s": rollout, "update_s": update, "forwards": float(len(forwards)),
        "sampled": float(sum(e.num_policy_tokens for e in eps)),
        "tokens": float(sum(s.num_tokens for e in eps for s in e.sub_traces)),
        "sub_traces": sum(len(e.sub_traces) for e in eps) / len(eps),
        "turns": sum(e.num_turns for e in eps) / len(eps),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--turns", type=int, default=8, help="turns per episode of the base workload")
    p.add_argument("--episodes", type=int, default=8, help="episodes per batch of the base workload")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    T, B = args.turns, args.episodes
    workloads = {"base": (T, B), "turns x2": (2 * T, B), "turns x4": (4 * T, B),
                 "batch x2": (T, 2 * B), "batch x4": (T, 4 * B)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in workloads}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_model(Path(tmp) / "model", size="tiny", seed=0)
        measure(model_dir, T, B)  # warm-up
        for r in range(args.repeats):
            names = list(workloads) if r % 2 == 0 else list(reversed(workloads))
            for name in names:
                runs[name].append(measure(model_dir, *workloads[name]))

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    print(f"scaling, tiny model, graph_nav small (KeepGoing), policy compaction in 1024 tokens, "
          f"{args.threads} thread(s), median of {args.repeats}; "
          f"ratios against the base ({T} turns, {B} episodes)")
    print(f"{'workload':<10}{'turns':>6}{'eps':>5}{'sub/ep':>7}{'sampled':>9}{'tokens':>8}{'forwards':>9}"
          f"{'rollout s':>10}{'x time':>7}{'x tok':>7}{'per tok':>8}"
          f"{'update s':>9}{'x time':>7}{'x tok':>7}{'per tok':>8}")
    for name, (_, episodes) in workloads.items():
        r_time, r_tok = (med(name, k) / med("base", k) for k in ("rollout_s", "sampled"))
        u_time, u_tok = (med(name, k) / med("base", k) for k in ("update_s", "tokens"))
        print(f"{name:<10}{med(name, 'turns'):>6.1f}{episodes:>5}{med(name, 'sub_traces'):>7.2f}"
              f"{med(name, 'sampled'):>9.0f}{med(name, 'tokens'):>8.0f}{med(name, 'forwards'):>9.0f}"
              f"{med(name, 'rollout_s'):>10.2f}{r_time:>7.2f}{r_tok:>7.2f}{r_time / r_tok:>8.2f}"
              f"{med(name, 'update_s'):>9.2f}{u_time:>7.2f}{u_tok:>7.2f}{u_time / u_tok:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
