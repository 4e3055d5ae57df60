"""FSDP2 learner ranks (``distributed.learner_sharding: fsdp2``, gloo, 2 spawned ranks): one update on 2
sharded ranks gives the parameters and metrics of the same update on 1 rank within 1e-5, under
token-mean and the seq-mean modes, for PPO (policy and critic) and GRPO (with its sharded reference);
the gathered optimiser states have one rank's format and values; a rank with no episode in a
mini-batch still runs the passes the other's collectives need."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agentrl.chat import ChatFormat
from agentrl.config import ConfigError, load_config
from agentrl.critic import critic_from_policy, reference_from_policy
from agentrl.data_parallel import SINGLE, DataParallel
from agentrl.fsdp import full_state_dict, shard_model
from agentrl.learner import Learner
from agentrl.models import load_model
from agentrl.registry import make
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner
from agentrl.train import tasks_for

COMMON = ["rollout.tasks_per_iteration=4", "rollout.group_size=2", "rollout.max_response_tokens=12",
          "optim.micro_batch_tokens=1024", "rollout.context_budget=1024", "optim.actor_lr=1e-4",
          "optim.critic_lr=1e-4", "optim.shared_prefix=0"]
# lr 1e-4, as in tests/test_data_parallel.py: Adam lifts a near-zero gradient's float noise to a step
# of about lr, so the ranks' other summation order must stay well under 1e-5 at that step size.
CASES = {  # 8 episodes; 2 mini-batches of 4: each rank updates on 2 episodes a mini-batch
    "ppo-token-mean": ["algorithm=ppo", "ppo.minibatches=2", "ppo.critic_updates=2"],
    "ppo-seq-mean-token-mean": ["algorithm=ppo", "ppo.minibatches=2", "ppo.aggregation=seq-mean-token-mean"],
    "grpo-token-mean-kl": ["algorithm=grpo", "grpo.minibatches=2", "grpo.aggregation=token-mean"],
    "grpo-seq-mean-token-sum-norm": ["algorithm=grpo", "grpo.minibatches=2", "grpo.kl_beta=0",
                                     "grpo.aggregation=seq-mean-token-sum-norm"],
    # 8 mini-batches of 1 episode: rank 1 has no row in any of them and runs idle passes only
    "grpo-one-episode-minibatches": ["algorithm=grpo", "grpo.minibatches=8", "grpo.kl_beta=0"],
    "ppo-one-episode-minibatches": ["algorithm=ppo", "ppo.minibatches=8"],  # the critic's idle passes too
}


def update(model_dir: Path, episodes: list, name: str, parallel: DataParallel) -> dict:
    """One learner step of case ``name`` (sharded when ``parallel`` is FSDP2): the whole parameters, the
    metrics and the optimiser states after it (on rank 0; empty elsewhere)."""
    torch.manual_seed(0)
    cfg = load_config(None, [*COMMON, f"model.path={model_dir}", *CASES[name]])
    policy = load_model(model_dir)[0].eval()
    critic = critic_from_policy(policy, seed=0).eval() if cfg.needs_critic else None
    reference = reference_from_policy(load_model(model_dir)[0].eval()) if cfg.needs_reference else None
    if parallel.fsdp:
        for model in (policy, critic, reference):
            if model is not None:
                shard_model(model)
    learner = Learner(cfg, policy, critic=critic, reference=reference, seed=0, parallel=parallel)
    metrics = learner.step(episodes)
    params = {}
    for label, model in (("policy", policy), ("critic", critic)):
        if model is not None:
            state = full_state_dict(model) if parallel.fsdp else model.state_dict()
            params |= {f"{label}.{k}": v.detach().clone() for k, v in state.items()}
    return {"params": params, "metrics": metrics, "learner": learner.state_dict()}


def rank_main(rank: int, world: int, store: str, model_dir: str, episodes_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        episodes = pickle.loads(Path(episodes_file).read_bytes())
        parallel = DataParallel(rank, world, "fsdp2")
        results = {name: update(Path(model_dir), episodes, name, parallel) for name in CASES}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def episodes(tiny_model_dir: Path) -> list:
    cfg = load_config(None, [*COMMON, f"model.path={tiny_model_dir}"])
    policy, tokenizer = load_model(tiny_model_dir)
    runner = Runner(TorchSampler(policy.eval()), ChatFormat(tokenizer), cfg.to_runner_config())
    result = runner.run(lambda: make("arithmetic"), tasks_for(cfg, 1), seed=5)
    assert len(result.episodes) == 8
    return [rewarded(e, float(i % 2)) for i, e in enumerate(result.episodes)]


def rewarded(episode, reward: float):
    """``episode`` with ``reward`` at its last token: the untrained model solves no task, and with every
    reward 0 GRPO's advantages are all 0 and its update moves nothing but float noise."""
    last = episode.sub_traces[-1]
    rewards = (*last.rewards[:-1], reward)
    return dataclasses.replace(episode, sub_traces=(*episode.sub_traces[:-1],
                                                    dataclasses.replace(last, rewards=rewards)))


@pytest.fixture(scope="module")
def sharded(tiny_model_dir: Path, episodes: list, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fsdp")
    (tmp / "episodes.pkl").write_bytes(pickle.dumps(episodes))
    args = (2, str(tmp / "store"), str(tiny_model_dir), str(tmp / "episodes.pkl"), str(tmp / "out"))
    mp.start_processes(rank_main, args=args, nprocs=2, join=True, start_method="spawn")
    return torch.load(tmp / "out")


def _one_rank(tiny_model_dir: Path, episodes: list, name: str) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run: kernels that split work by thread sum in another order
    try:
        return update(tiny_model_dir, episodes, name, SINGLE)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CASES))
def test_two_sharded_ranks_update_as_one(name: str, tiny_model_dir: Path, episodes: list,
                                         sharded: dict) -> None:
    one, two = _one_rank(tiny_model_dir, episodes, name), sharded[name]
    assert two["params"].keys() == one["params"].keys()
    for key, value in one["params"].items():
        assert two["params"][key].shape == value.shape, key  # gathered whole
        assert (two["params"][key] - value).abs().max() <= 1e-5, key
    start = load_model(tiny_model_dir)[0].state_dict()
    moved = max((one["params"][f"policy.{k}"] - v).abs().max().item() for k, v in start.items())
    assert moved > 2e-5  # the update moved parameters by more than the 1e-5 the comparison allows
    for key in ("policy/loss", "policy/clip_frac", "policy/approx_kl", "policy/entropy", "policy/kl",
                "grad_norm/policy", "critic/loss", "grad_norm/critic"):
        if key in one["metrics"]:
            assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-6), key
    assert two["metrics"].keys() == one["metrics"].keys()


@pytest.mark.parametrize("name", ["ppo-token-mean", "ppo-one-episode-minibatches"])
def test_gathered_optimiser_states_are_one_ranks(name: str, tiny_model_dir: Path, episodes: list,
                                                 sharded: dict) -> None:
    """What a checkpoint stores: the same keys, shapes and (within float rounding) values as one rank's
    optimiser, so either switch and any rank count can load it."""
    one, two = _one_rank(tiny_model_dir, episodes, name)["learner"], sharded[name]["learner"]
    for which in ("policy_optimizer", "critic_optimizer"):
        if one[which] is None:
            assert two[which] is None
            continue
        assert two[which]["param_groups"] == one[which]["param_groups"]
        assert two[which]["state"].keys() == one[which]["state"].keys()
        for index, per in one[which]["state"].items():
            for key, value in per.items():
                got = two[which]["state"][index][key]
                assert type(got) is type(value) and got.shape == value.shape, (which, index, key)
                # gradient moments: float noise of another summation order, small beside their scale
                scale = float(value.abs().max()) if value.numel() else 0.0
                assert torch.allclose(got, value, rtol=1e-4, atol=1e-4 * scale), (which, index, key)
    assert torch.equal(two["generator"], one["generator"])


def test_fsdp2_refuses_what_would_desynchronise_the_ranks(tiny_model_dir: Path) -> None:
    base = [f"model.path={tiny_model_dir}", "distributed.learner_sharding=fsdp2"]
    with pytest.raises(ConfigError, match=r"^optim.shared_prefix: expected 0 with distributed.learner_shard"):
        load_config(None, base)
    with pytest.raises(ConfigError, match=r"^model.critic: expected separate with distributed.learner_shard"):
        load_config(None, [*base, "optim.shared_prefix=0", "model.critic=shared"])
    assert load_config(None, [*base, "optim.shared_prefix=0"]).distributed.learner_sharding == "fsdp2"
