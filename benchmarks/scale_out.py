"""Scale-out on a 2-core machine: rollout throughput on 1 against 2 Ray workers, and the iteration time
with and without the one-step overlap, each pair measured side by side in one run.

    python benchmarks/scale_out.py                       # 16 episodes a rollout, 3 repeats
    python benchmarks/scale_out.py --episodes 32 --repeats 5 --delay 0.05

The environment is arithmetic whose every step waits ``--delay`` seconds (50 ms: a tool call's latency,
``benchmarks/slow_tool_env.py``); the model is the default tiny one, so the tool, not the model, is
what a rollout waits for, as in long tool-using episodes.

1. **Workers**: the same ``--episodes`` tasks cut into 2 shards (so both play exactly the same
   episodes), played by 1 Ray worker and by 2, alternating, after one warm-up each; episodes per second
   (median) and the ratio 2/1 (target >= 1.7x). A runner steps its environments one after another, so
   a second worker halves the waiting.
2. **Overlap**: ``agentrl train`` (GRPO, in process) for ``--iterations`` iterations with
   ``distributed.overlap`` off and on, alternating; the iteration time is the sum of an iteration's
   ``perf/seconds_*`` phases (with the overlap, the rollout phase is the wait for the rollout that ran
   during the previous update); the first iteration, which has nothing to overlap, is left out; median
   over iterations and repeats, and the ratio off/on (target >= 1.3x).

Ratios are the result; absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path[:0] = [str(BENCHMARKS), str(ROOT)]

ENV = "slow_tool_env:SlowArithmetic"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=16, help="episodes per rollout (tasks, group size 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each side (median)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds every environment step waits")
    p.add_argument("--iterations", type=int, default=4, help="training iterations of each overlap run")
    p.add_argument("--skip-workers", action="store_true", help="only the overlap part (no Ray needed)")
    return p.parse_args(argv)


def settings(args: argparse.Namespace, model_dir: Path) -> list[str]:
    return [f"model.path={model_dir}", f"env.name={ENV}", f"env.options.delay_s={args.delay}",
            f"rollout.tasks_per_iteration={max(2, args.episodes // 2)}", "rollout.group_size=2",
            "rollout.max_response_tokens=16", "rollout.max_concurrent=64", "optim.micro_batch_tokens=512",
            "run.checkpoint_every=0", "distributed.worker_cpus=0.5"]


def workers(args: argparse.Namespace, model_dir: Path) -> dict[str, float]:
    """Episodes per second on 1 and on 2 workers (same two shards, so the same episodes)."""
    import ray

    from agentrl.config import load_config
    from agentrl.models import load_model
    from agentrl.ray_rollout import RayRollout
    from agentrl.train import tasks_for

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    policy, _ = load_model(model_dir)
    pools, rates = {}, {1: [], 2: []}
    try:
        for n in (1, 2):
            cfg = load_config(ROOT / "examples" / "grpo_arithmetic.yaml",
                              [*settings(args, model_dir), f"distributed.rollout_workers={n}",
                               "distributed.rollout_shards=2"])
            pools[n] = (RayRollout(cfg, model_dir, policy), tasks_for(cfg, 1))
            pools[n][0].run(pools[n][1], seed=0)  # warm-up
        for r in range(args.repeats):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                pool, tasks = pools[n]
                start = time.perf_counter()
                result = pool.run(tasks, seed=r + 1)
                rates[n].append(len(result.episodes) / (time.perf_counter() - start))
    finally:
        for pool, _ in pools.values():
            pool.close()
        ray.shutdown()
    return {n: statistics.median(v) for n, v in rates.items()}


def iteration_times(args: argparse.Namespace, model_dir: Path, overlap: bool, out: Path) -> list[float]:
    from agentrl.config import load_config
    from agentrl.metrics import read_metrics
    from agentrl.train import train

    cfg = load_config(ROOT / "examples" / "grpo_arithmetic.yaml",
                      [*settings(args, model_dir), f"distributed.overlap={str(overlap).lower()}",
                       f"run.iterations={args.iterations}", f"run.run_dir={out}"])
    train(cfg, progress=False)
    records = read_metrics(out)[1:]  # the first iteration has nothing to overlap
    return [sum(v for k, v in r.items() if k.startswith("perf/seconds_") and k != "perf/seconds_checkpoint")
            for r in records]


def overlap(args: argparse.Namespace, model_dir: Path, tmp: Path) -> dict[bool, float]:
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            times[on] += iteration_times(args, model_dir, on, tmp / f"run_{r}_{on}")
    return {on: statistics.median(v) for on, v in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from agentrl.models import init_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_model(Path(tmp) / "model", size="tiny", seed=0)
        print(f"scale_out: {args.episodes} episodes a rollout, {args.delay * 1000:g} ms a step, "
              f"median of {args.repeats} repeats")
        if not args.skip_workers:
            rate = workers(args, model_dir)
            print(f"rollout workers   1: {rate[1]:.2f} episodes/s   2: {rate[2]:.2f} episodes/s   "
                  f"ratio 2/1: {rate[2] / rate[1]:.2f}x")
        it = overlap(args, model_dir, Path(tmp))
        print(f"iteration time    no overlap: {it[False]:.3f} s   overlap: {it[True]:.3f} s   "
              f"ratio off/on: {it[False] / it[True]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
