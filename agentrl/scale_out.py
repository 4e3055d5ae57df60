"""How a run is placed: the rollout (in process or on Ray workers) and the learner ranks around it.

The train loop calls three functions from here and stays the same loop at any scale:

- ``make_rollout``: rank 0's ``Rollout`` (``agentrl.rollout_shards``): the runner in this process when
  ``distributed.rollout_workers`` is 0, else ``agentrl.ray_rollout.RayRollout``. The other learner
  ranks play nothing (None).
- ``play``: rank 0 plays the iteration's tasks; every rank gets the same ``RunResult`` (a broadcast), so
  every rank holds the same prepared rows (each computes a share of them) and updates on its share of
  every mini-batch (``agentrl.data_parallel``).
- ``push``: after an update, rank 0 sends the new weights to its rollout (``push_weights``).

Rank 0 alone writes the run directory (config, metrics, episodes, checkpoints); the models are equal on
every rank, so its checkpoint is the whole state and a run resumes at any rank count.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.batching import RolloutRunner, runner_on
from agentrl.config import TrainConfig
from agentrl.data_parallel import DataParallel
from agentrl.overlap import OverlappedRollout, PolicyCopy
from agentrl.registry import make
from agentrl.rollout import TorchSampler
from agentrl.rollout_shards import InProcessRollout, Rollout
from agentrl.runner import RunResult, Task
from agentrl.slot_sampler import SlotSampler
from agentrl.weight_sync import push_weights


def make_rollout(cfg: TrainConfig, runner: RolloutRunner, model_dir: Path, policy: Any,
                 parallel: DataParallel) -> Rollout | None:
    """Rank 0's rollout for ``cfg.distributed`` (None on the other ranks)."""
    if not parallel.is_main:
        return None
    d = cfg.distributed
    if d.rollout_workers >= 1:
        from agentrl.ray_rollout import RayRollout

        rollout: Rollout = RayRollout(cfg, model_dir, policy)
        return OverlappedRollout(rollout, rollout.sampler) if d.overlap else rollout
    env = cfg.env
    if not d.overlap:
        return InProcessRollout(runner, lambda: make(env.name, **env.options), d.shards)
    # overlap: the runner samples while the learner updates; a torch sampler then needs its own copy
    target = runner.sampler
    if isinstance(runner.sampler, TorchSampler | SlotSampler):
        target = PolicyCopy(policy)
        runner = runner_on(runner, target.model)
    inner = InProcessRollout(runner, lambda: make(env.name, **env.options), d.shards)
    return OverlappedRollout(inner, target)


def play(rollout: Rollout | None, parallel: DataParallel, tasks: Sequence[Task], *, seed: int,
         upcoming: tuple[Sequence[Task], int] | None = None) -> RunResult:
    """The iteration's episodes, played by rank 0 and given to every rank; with overlap, ``upcoming``
    (the next iteration's tasks and seed) starts playing in the background."""
    if isinstance(rollout, OverlappedRollout):
        result = rollout.run(tasks, seed=seed, upcoming=upcoming)
    else:
        result = rollout.run(tasks, seed=seed) if rollout is not None else None
    return parallel.broadcast(result)


def push(rollout: Rollout | None, policy: Any) -> float | None:
    """Send the updated weights to the rollout (rank 0); seconds taken, None when nothing was sent."""
    return None if rollout is None else push_weights(rollout.sampler, policy)
