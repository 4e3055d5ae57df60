"""Rollout workers on Ray: the same shards give exactly the same episodes on 1 or 2 workers as in
process, in task order; a worker killed mid-iteration is replaced and its shard played again; a hanging
environment is reported, the shard's finished episodes are kept and the run goes on.

One local Ray cluster (2 CPUs, no dashboard) serves the whole module; workers take half a CPU each.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from agentrl.chat import ChatFormat  # noqa: E402
from agentrl.config import load_config  # noqa: E402
from agentrl.models import load_model  # noqa: E402
from agentrl.ray_rollout import RayRollout  # noqa: E402
from agentrl.registry import make  # noqa: E402
from agentrl.rollout import TorchSampler  # noqa: E402
from agentrl.rollout_shards import InProcessRollout, split_tasks  # noqa: E402
from agentrl.runner import Runner, Task  # noqa: E402
from agentrl.train import tasks_for  # noqa: E402

BASE = ["rollout.tasks_per_iteration=4", "rollout.group_size=2", "rollout.max_response_tokens=12",
        "rollout.max_concurrent=8", "distributed.worker_cpus=0.5"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    yield
    ray.shutdown()


def config(model_dir: Path, *extra: str):
    return load_config(None, [*BASE, f"model.path={model_dir}", *extra])


def fingerprint(result) -> list[tuple]:
    """Everything an episode is made of that sampling decides, in order."""
    return [(e.task_id, e.group_id, e.reward, tuple((tuple(s.token_ids), tuple(s.logprobs), tuple(s.rewards))
                                            for s in e.sub_traces)) for e in result.episodes]


def seeds(result) -> list[int]:
    """The task seed of each episode, in order (the task id ends with it)."""
    return [int(e.task_id.rsplit(":", 1)[1]) for e in result.episodes]


def in_process(model_dir: Path, cfg, shards: int) -> InProcessRollout:
    policy, tokenizer = load_model(model_dir)
    runner = Runner(TorchSampler(policy.eval()), ChatFormat(tokenizer), cfg.to_runner_config())
    return InProcessRollout(runner, lambda: make(cfg.env.name, **cfg.env.options), shards)


def test_split_keeps_groups_whole_and_task_order() -> None:
    tasks = [Task(seed=i // 2, group_id=f"g{i // 2}") for i in range(10)]  # 5 groups of 2
    parts = split_tasks(tasks, 2)
    assert [len(p) for p in parts] == [6, 4]  # 3 groups, then 2
    assert [t for p in parts for t in p] == tasks
    assert [len(p) for p in split_tasks(tasks, 5)] == [2] * 5


def test_two_workers_give_the_episodes_of_one_and_of_one_process(tiny_model_dir: Path) -> None:
    cfg = config(tiny_model_dir, "distributed.rollout_workers=2", "distributed.rollout_shards=2")
    tasks, seed = tasks_for(cfg, 1), 1234
    local = in_process(tiny_model_dir, cfg, shards=2).run(tasks, seed=seed)
    policy, _ = load_model(tiny_model_dir)
    two = RayRollout(cfg, tiny_model_dir, policy)
    single = dataclasses.replace(cfg.distributed, rollout_workers=1)
    one = RayRollout(dataclasses.replace(cfg, distributed=single), tiny_model_dir, policy)
    try:
        by_two, by_one = two.run(tasks, seed=seed), one.run(tasks, seed=seed)
    finally:
        two.close()
        one.close()
    assert len(local.episodes) == len(tasks) and not local.failures
    assert fingerprint(by_two) == fingerprint(by_one) == fingerprint(local)
    assert seeds(by_two) == [t.seed for t in tasks]  # task order
    assert by_two.metrics["episodes"] == len(tasks) and by_two.metrics["failed_tasks"] == 0


def test_weights_reach_every_worker_through_the_object_store(tiny_model_dir: Path) -> None:
    import torch

    cfg = config(tiny_model_dir, "distributed.rollout_workers=2", "rollout.temperature=0")
    tasks = tasks_for(cfg, 1)
    policy, _ = load_model(tiny_model_dir)
    pool = RayRollout(cfg, tiny_model_dir, policy)
    try:
        before = pool.run(tasks, seed=1)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        pool.load_weights(policy.state_dict().items())
        after = pool.run(tasks, seed=1)
    finally:
        pool.close()
    # what the workers sample is what the changed driver policy samples in process
    local = in_process(tiny_model_dir, cfg, shards=2)
    local.runner.sampler = TorchSampler(policy.eval())
    assert fingerprint(after) == fingerprint(local.run(tasks, seed=1)) != fingerprint(before)


def test_a_worker_killed_mid_iteration_is_replaced_and_nothing_is_lost(tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    common = ("distributed.rollout_workers=2", "env.options.max_value=9")
    clean = config(tiny_model_dir, *common)
    tasks = tasks_for(clean, 1)
    expected = in_process(tiny_model_dir, clean, shards=2).run(tasks, seed=7)
    # env.name first: a new environment drops the options set before it (max_value among them)
    dying = config(tiny_model_dir, "env.name=faulty_envs:DyingArithmetic", *common,
                   f"env.options.die_seed={tasks[-1].seed}", f"env.options.marker={tmp_path / 'died'}")
    policy, _ = load_model(tiny_model_dir)
    pool = RayRollout(dying, tiny_model_dir, policy)
    try:
        result = pool.run(tasks, seed=7)
    finally:
        pool.close()
    assert (tmp_path / "died").exists() and pool.lost_workers == 1
    assert result.metrics["lost_workers"] == 1.0  # rollout/lost_workers (tests/test_ray_cluster.py: in train)
    assert fingerprint(result) == fingerprint(expected) and not result.failures


def test_a_hanging_environment_is_reported_and_the_run_goes_on(tiny_model_dir: Path, capfd) -> None:
    cfg = config(tiny_model_dir, "distributed.rollout_workers=2", "rollout.max_concurrent=1",
                 "env.name=faulty_envs:HangingArithmetic", "distributed.worker_timeout_s=20")
    tasks = tasks_for(cfg, 1)
    hang = tasks[-1]  # the last group (2 tasks, one seed) of the second shard: its first group finishes first
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, options={"hang_seed": hang.seed}))
    policy, _ = load_model(tiny_model_dir)
    pool = RayRollout(cfg, tiny_model_dir, policy)
    try:
        result = pool.run(tasks, seed=3)
        again = pool.run(tasks[:4], seed=3)  # the replaced worker plays on
    finally:
        pool.close()
    assert seeds(result) == [t.seed for t in tasks[:-2]]  # every finished one kept, in task order
    assert [f.task for f in result.failures] == tasks[-2:] and "hung" in result.failures[0].error
    assert result.metrics["failed_tasks"] == 2 and pool.lost_workers == 1
    assert result.metrics["lost_workers"] == 1.0 and again.metrics["lost_workers"] == 0.0  # per call
    assert "ran past distributed.worker_timeout_s" in capfd.readouterr().err
    assert len(again.episodes) == 4


def test_workers_the_cluster_cannot_place_are_a_one_line_error(tiny_model_dir: Path) -> None:
    cfg = config(tiny_model_dir, "distributed.rollout_workers=1", "distributed.worker_cpus=3")
    policy, _ = load_model(tiny_model_dir)  # the module's cluster has 2 CPUs
    message = r"^distributed.rollout_workers: 1 workers of 3 CPUs .* within 3s; the cluster has 2 CPUs"
    with pytest.raises(ValueError, match=message):
        RayRollout(cfg, tiny_model_dir, policy, start_timeout_s=3)
