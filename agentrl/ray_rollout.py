"""Rollout workers on Ray: N actors, each with its own policy copy, sampler and environments.

``RayRollout`` is a ``agentrl.rollout_shards.Rollout``: each iteration's tasks are cut into shards
(``distributed.rollout_shards``, each with its own sampling seed), the shards are handed to free workers,
and the results come back in task order, so the episodes are the ones one process playing the same
shards gives. After every policy update the train loop calls ``push_weights(rollout.sampler, policy)``;
``load_weights`` puts the state dict into Ray's object store once and every worker reads that one copy
(on GPUs an NCCL broadcast would be a different body of that one method).

Faults, each reported on stderr and in the metrics (``rollout/failed_tasks``, ``rollout/lost_workers``),
never a hang:
- A worker that dies (its process killed, out of memory): a new worker is started with the current
  weights and the shard is played again, which gives the same episodes (same tasks, same seed, same
  weights); after ``distributed.shard_retries`` tries its tasks are recorded as failures.
- Workers the cluster cannot place (more CPUs or GPUs asked for than it has) are a one-line error
  after ``start_timeout_s`` (5 minutes), not a hang.
- A shard that runs past ``distributed.worker_timeout_s`` (an environment that hangs): the episodes it
  had finished are kept (the worker records them as they end), its other tasks are recorded as
  failures, the worker is killed and replaced.

``ray.init`` starts a local cluster unless ``distributed.ray_address`` names one to join. A worker
imports what the driver can (the driver's ``sys.path`` is put in front of its own, for ``module:attr``
environments), reads the model's config and tokenizer from the run's model directory (a shared file
system on a cluster) and takes its weights from the object store. Ray is optional: this module is
imported only when ``distributed.rollout_workers`` is at least 1.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.config import TrainConfig
from agentrl.rollout_shards import merge_results, shard_seed, split_tasks
from agentrl.runner import Failure, RunResult, Task

INSTALL_HINT = "distributed.rollout_workers needs Ray: pip install 'agentrl[ray]'"
POLL_S = 0.2  # how often the driver looks for a hung shard while waiting
START_S = 300.0  # workers not placed and loaded by then never will be (a cluster without the resources)


def import_ray() -> Any:
    """The ``ray`` module; a one-line ``ValueError`` saying what to install when it is missing."""
    try:
        import ray
    except ImportError as err:
        raise ValueError(f"{INSTALL_HINT} ({err})") from None
    return ray


class RolloutWorker:
    """One worker's state (run inside a Ray actor): a policy copy, its sampler, a runner, environments."""

    def __init__(self, cfg: TrainConfig, model_dir: str, sys_path: list[str], device: str) -> None:
        sys.path[:0] = [p for p in sys_path if p not in sys.path]
        import torch

        from agentrl.backends import make_sampler
        from agentrl.chat import ChatFormat
        from agentrl.models import load_model
        from agentrl.runner import Runner

        threads = max(1, int(cfg.distributed.worker_cpus))
        torch.set_num_threads(threads)  # the CPUs Ray reserved, not every core of the machine
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
        policy, tokenizer = load_model(model_dir, dtype=dtype)
        self.policy = policy.to(device).eval()
        self.cfg = cfg
        self.sampler = make_sampler(cfg.rollout.backend, self.policy, model_dir, vllm=cfg.rollout.vllm,
                                    seed=cfg.run.seed)
        self.runner = Runner(self.sampler, ChatFormat(tokenizer), cfg.to_runner_config())
        self.finished: dict[int, dict[int, Any]] = {}  # shard -> task index -> episode, as they end

    def set_weights(self, state: dict[str, Any]) -> bool:
        """Load the policy's weights (read from the object store), and hand them on to an engine that
        keeps its own copy."""
        import torch

        from agentrl.weight_sync import push_weights

        with torch.no_grad():
            self.policy.load_state_dict(state)
        push_weights(self.sampler, self.policy)
        return True

    def run_shard(self, shard: int, tasks: Sequence[Task], seed: int) -> RunResult:
        """Play one shard's tasks with its seed; episodes are recorded as they finish."""
        from agentrl.registry import make

        env = self.cfg.env
        kept = self.finished.setdefault(shard, {})
        result = self.runner.run(lambda: make(env.name, **env.options), tasks, seed=seed,
                                 on_episode=kept.__setitem__)
        self.finished.pop(shard, None)
        return result

    def finished_so_far(self, shard: int) -> dict[int, Any]:
        """The episodes of ``shard`` finished so far (task index -> episode); called while it runs."""
        return dict(self.finished.get(shard, {}))

    def pid(self) -> int:
        """The worker's process id (tests kill it)."""
        return os.getpid()


@dataclass
class _InFlight:
    worker: int
    shard: int
    started: float
    tries: int


class RayRollout:
    """``distributed.rollout_workers`` Ray actors playing the iteration's shards; see the module docstring.

    Args:
        cfg: the run's config (the workers build their runner, sampler and environments from it).
        model_dir: a Hugging Face directory with the policy's config and tokenizer.
        policy: the driver's policy; its weights are sent to the workers at once.
        start_timeout_s: how long the workers may take to start and load the weights.
    """

    def __init__(self, cfg: TrainConfig, model_dir: str | Path, policy: Any, *,
                 start_timeout_s: float = START_S) -> None:
        self.ray = import_ray()
        self.cfg, self.model_dir = cfg, str(model_dir)
        d = cfg.distributed
        if not self.ray.is_initialized():
            if d.ray_address is not None:
                self.ray.init(address=d.ray_address, include_dashboard=False, log_to_driver=False)
            else:
                cpus = max(os.cpu_count() or 1, math.ceil(d.rollout_workers * d.worker_cpus))
                self.ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                              object_store_memory=256 * 2**20)
        options: dict[str, Any] = {"num_cpus": d.worker_cpus, "max_concurrency": 2}
        if d.worker_gpus > 0:
            options["num_gpus"] = d.worker_gpus
        self._actor = self.ray.remote(RolloutWorker).options(**options)
        self._weights: Any = None
        self.workers = [self._spawn() for _ in range(d.rollout_workers)]
        self.lost_workers = 0  # over the run: workers that died or hung and were replaced
        try:  # a cluster without the CPUs (or GPUs) asked for never places the actors: say so
            self.load_weights(policy.state_dict().items(), timeout=start_timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            self.close()
            have = self.ray.cluster_resources()
            raise ValueError(
                f"distributed.rollout_workers: {d.rollout_workers} workers of {d.worker_cpus:g} CPUs "
                f"({d.worker_gpus:g} GPUs) each did not start within {start_timeout_s:g}s; the cluster "
                f"has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs") from None

    @property
    def sampler(self) -> RayRollout:
        """``push_weights`` sends the weights here (``load_weights``)."""
        return self

    def _spawn(self) -> Any:
        device = "cuda" if self.cfg.distributed.worker_gpus > 0 else "cpu"
        worker = self._actor.remote(self.cfg, self.model_dir, list(sys.path), device)
        if self._weights is not None:  # loaded before any shard: the actor runs two calls at once
            self.ray.get(worker.set_weights.remote(self._weights))
        return worker

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]], timeout: float | None = None) -> None:
        """Put the weights into the object store once; every worker loads that copy before its next shard
        (this waits until all have loaded, at most ``timeout`` seconds)."""
        state = {name: tensor.detach().cpu().clone() for name, tensor in named_tensors}
        self._weights = self.ray.put(state)
        self.ray.get([w.set_weights.remote(self._weights) for w in self.workers], timeout=timeout)

    def run(self, tasks: Sequence[Task], *, seed: int) -> RunResult:
        """Every shard on a free worker; the results in task order (``merge_results``), with
        ``metrics['lost_workers']``: the workers that died or hung during this call and were replaced."""
        lost_before = self.lost_workers
        shards = self.cfg.distributed.shards
        parts = split_tasks(tasks, shards)
        start = time.perf_counter()
        queue = [(s, 0) for s in range(shards) if parts[s]]
        results: dict[int, RunResult] = {}
        failures: list[Failure] = []
        flying: dict[Any, _InFlight] = {}
        free = list(range(len(self.workers)))
        while queue or flying:
            while queue and free:
                (s, tries), w = queue.pop(0), free.pop(0)
                ref = self.workers[w].run_shard.remote(s, parts[s], shard_seed(seed, s, shards))
                flying[ref] = _InFlight(w, s, time.perf_counter(), tries)
            done, _ = self.ray.wait(list(flying), num_returns=1, timeout=POLL_S)
            for ref in done:
                job = flying.pop(ref)
                try:
                    results[job.shard] = self.ray.get(ref)
                    free.append(job.worker)
                except self.ray.exceptions.RayActorError as err:
                    self._replace(job.worker, f"rollout worker {job.worker} died on shard {job.shard} "
                                              f"({type(err).__name__})")
                    free.append(job.worker)
                    if job.tries < self.cfg.distributed.shard_retries:
                        queue.append((job.shard, job.tries + 1))  # same tasks, seed, weights: same episodes
                    else:
                        lost = "rollout worker died; shard not played"
                        failures += [Failure(t, lost) for t in parts[job.shard]]
            for ref, job in list(flying.items()):
                if time.perf_counter() - job.started > self.cfg.distributed.worker_timeout_s:
                    del flying[ref]
                    results[job.shard] = self._hung(job, parts[job.shard])
                    free.append(job.worker)
        ordered = [results[s] for s in sorted(results)]
        merged = merge_results(ordered, time.perf_counter() - start, failures)
        merged.metrics["lost_workers"] = float(self.lost_workers - lost_before)
        return merged

    def _hung(self, job: _InFlight, tasks: Sequence[Task]) -> RunResult:
        """A shard past its time: keep what it finished, record the rest, replace its worker."""
        try:
            kept = self.ray.get(self.workers[job.worker].finished_so_far.remote(job.shard), timeout=30)
        except Exception:  # noqa: BLE001 - a worker too stuck to answer has finished nothing we can read
            kept = {}
        timeout = self.cfg.distributed.worker_timeout_s
        self._replace(job.worker, f"rollout worker {job.worker}: shard {job.shard} ran past "
                                  f"distributed.worker_timeout_s = {timeout:g}s (an environment hangs?)")
        episodes = [kept[i] for i in sorted(kept)]
        lost = [Failure(t, f"rollout worker hung: not finished within {timeout:g}s")
                for i, t in enumerate(tasks) if i not in kept]
        return merge_results([RunResult(episodes, lost, {})], time.perf_counter() - job.started)

    def _replace(self, index: int, reason: str) -> None:
        print(f"agentrl: {reason}; starting a new worker", file=sys.stderr)
        self.ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self._spawn()
        self.lost_workers += 1

    def close(self) -> None:
        """Kill the workers (the cluster stays up for the rest of the process)."""
        for worker in self.workers:
            self.ray.kill(worker, no_restart=True)
        self.workers = []
