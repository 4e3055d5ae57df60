"""An iteration's tasks cut into shards, each played with its own sampling seed, and the results merged.

The unit of rollout placement is the **shard**, not the worker: ``distributed.rollout_shards`` contiguous
runs of the iteration's tasks (a GRPO group is never cut), shard ``s`` sampled from the seed
``shard_seed(seed, s, shards)``. A shard's episodes depend only on its tasks, its seed and the weights,
so the same shards give the same episodes (tokens, log-probs, rewards) whether one process plays them
one after another (``InProcessRollout``) or N Ray workers play them side by side
(``agentrl.ray_rollout.RayRollout``); ``merge_results`` puts them back in task order. With one shard the
seed is the iteration's own, so a run with one shard in process is exactly the run without sharding.

A ``Rollout`` is what the train loop plays an iteration with: ``run(tasks, seed=...)`` and ``sampler``,
the object ``agentrl.weight_sync.push_weights`` hands the updated weights to. No torch here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from agentrl.continuous import ContinuousRunner
from agentrl.env import Env
from agentrl.runner import Failure, Runner, RunResult, Task, run_metrics


class Rollout(Protocol):
    """Plays an iteration's tasks; in process or on rollout workers."""

    @property
    def sampler(self) -> Any:
        """What ``push_weights`` gives the updated policy's weights to."""
        ...

    def run(self, tasks: Sequence[Task], *, seed: int) -> RunResult:
        """Every task's episode (or failure), in task order."""
        ...

    def close(self) -> None:
        """Release workers (nothing for the in-process one)."""
        ...


def split_tasks(tasks: Sequence[Task], shards: int) -> list[list[Task]]:
    """``tasks`` cut into ``shards`` contiguous runs of near-equal numbers of groups (the earlier shards
    one group more), a group (consecutive tasks of one ``group_id``) never cut; a shard is empty only
    when there are fewer groups than shards."""
    if shards < 1:
        raise ValueError(f"shards: expected an int >= 1, got {shards!r}")
    groups: list[list[Task]] = []
    for task in tasks:
        if groups and groups[-1][0].group_id == task.group_id:
            groups[-1].append(task)
        else:
            groups.append([task])
    size, extra = divmod(len(groups), shards)
    out, start = [], 0
    for s in range(shards):
        end = start + size + (s < extra)
        out.append([task for group in groups[start:end] for task in group])
        start = end
    return out


def shard_seed(seed: int, shard: int, shards: int) -> int:
    """The sampling seed of shard ``shard`` of ``shards``: the iteration's ``seed`` itself for a single
    shard, else one drawn from ``(seed, shard)`` alone (never from the worker that plays it)."""
    if shards == 1:
        return seed
    return random.Random(f"{seed}:shard:{shard}").randrange(2**31)


def sampled_tokens(result: RunResult) -> int:
    """The tokens a run sampled, from its throughput metric and its seconds."""
    m = result.metrics
    return round(m.get("sampled_tokens_per_s", 0.0) * m.get("seconds", 0.0))


def merge_results(results: Sequence[RunResult], seconds: float,
                  failures: Sequence[Failure] = ()) -> RunResult:
    """The shards' results (in shard order) as one run's: episodes and failures in task order, the
    extra ``failures`` (tasks a lost worker never finished) after them, metrics over all of them with
    the wall-clock ``seconds`` of the whole."""
    episodes = [e for r in results for e in r.episodes]
    lost = [f for r in results for f in r.failures] + list(failures)
    tokens = sum(sampled_tokens(r) for r in results)
    return RunResult(episodes, lost, run_metrics(episodes, lost, tokens, seconds))


class InProcessRollout:
    """The shards played one after another by one runner in this process (``rollout_workers: 0``):
    static rounds or continuous batching (``agentrl.batching``)."""

    def __init__(self, runner: Runner | ContinuousRunner, make_env: Callable[[], Env], shards: int) -> None:
        self.runner, self.make_env, self.shards = runner, make_env, shards

    @property
    def sampler(self) -> Any:
        """The runner's sampler (the torch one reads the policy itself; vLLM gets the weights)."""
        return self.runner.sampler

    def run(self, tasks: Sequence[Task], *, seed: int) -> RunResult:
        """Every shard in turn with its own seed; one shard is exactly ``runner.run(tasks, seed)``."""
        if self.shards == 1:
            return self.runner.run(self.make_env, tasks, seed=seed)
        start = time.perf_counter()
        parts = [self.runner.run(self.make_env, part, seed=shard_seed(seed, s, self.shards))
                 for s, part in enumerate(split_tasks(tasks, self.shards))]
        return merge_results(parts, time.perf_counter() - start)

    def close(self) -> None:
        """Nothing to release."""
