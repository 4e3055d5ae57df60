"""The data-parallel learner on torch.distributed (gloo, 2 spawned ranks): one update on 2 ranks gives
the parameters (policy and critic) and the metrics of the same update on 1 rank, within 1e-5, under
token-mean and the seq-mean modes, for PPO and GRPO; the normalisers are global, not per rank."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agentrl.chat import ChatFormat
from agentrl.config import load_config
from agentrl.critic import critic_from_policy, reference_from_policy
from agentrl.data_parallel import SINGLE, DataParallel
from agentrl.learner import Learner
from agentrl.models import load_model
from agentrl.registry import make
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner
from agentrl.train import tasks_for

COMMON = ["rollout.tasks_per_iteration=4", "rollout.group_size=2", "rollout.max_response_tokens=12",
          "optim.micro_batch_tokens=1024", "rollout.context_budget=1024", "optim.actor_lr=1e-4",
          "optim.critic_lr=1e-4"]
# lr 1e-4: Adam turns a parameter's near-zero gradient into a step of about lr whatever its float noise,
# so a summation order's noise can move such a parameter by a fraction of lr (1.4e-5 at lr 1e-3, in the
# shared critic's embedding rows); at 1e-4 that stays under the 1e-5 the ranks must agree to.
CASES = {  # 8 episodes; 2 mini-batches of 4; on 2 ranks each rank updates on 2 episodes a mini-batch
    "ppo-token-mean": ["algorithm=ppo", "ppo.minibatches=2", "ppo.critic_updates=2"],
    "ppo-seq-mean-token-mean": ["algorithm=ppo", "ppo.minibatches=2", "ppo.aggregation=seq-mean-token-mean"],
    "ppo-shared-critic": ["algorithm=ppo", "ppo.minibatches=2", "model.critic=shared"],
    "grpo-token-mean": ["algorithm=grpo", "grpo.minibatches=2", "grpo.aggregation=token-mean"],
    "grpo-seq-mean-token-sum-norm": ["algorithm=grpo", "grpo.minibatches=2",
                                     "grpo.aggregation=seq-mean-token-sum-norm"],
}


def update(model_dir: Path, episodes: list, name: str, parallel: DataParallel) -> dict:
    """One learner step of case ``name``; the models' parameters and the metrics after it."""
    from agentrl.critic import SharedValueHead

    torch.manual_seed(0)
    cfg = load_config(None, [*COMMON, f"model.path={model_dir}", *CASES[name]])
    policy = load_model(model_dir)[0].eval()
    critic = None
    if cfg.needs_critic:
        shared = cfg.model.critic == "shared"
        critic = SharedValueHead(policy, seed=0) if shared else critic_from_policy(policy, seed=0).eval()
    reference = reference_from_policy(load_model(model_dir)[0].eval()) if cfg.needs_reference else None
    learner = Learner(cfg, policy, critic=critic, reference=reference, seed=0, parallel=parallel)
    metrics = learner.step(episodes)
    params = {f"policy.{k}": v.detach().clone() for k, v in policy.named_parameters()}
    if critic is not None:
        params |= {f"critic.{k}": v.detach().clone() for k, v in critic.named_parameters()}
    return {"params": params, "metrics": metrics}


def shared_evaluation(model_dir: Path, episodes: list, parallel: DataParallel) -> dict:
    """The episodes this rank evaluated when preparing (critic values, reference log-probs), and what
    every row got back."""
    from agentrl.batch import rows_from_episodes

    cfg = load_config(None, [*COMMON, f"model.path={model_dir}", "algorithm=grpo"])
    learner = Learner(cfg, load_model(model_dir)[0], seed=0, parallel=parallel,
                      reference=reference_from_policy(load_model(model_dir)[0]))
    rows = rows_from_episodes(episodes)
    seen: list[int] = []

    def evaluate(mine: list) -> list[torch.Tensor]:
        seen.extend(row.episode_index for row in mine)
        return [row.token_ids.double() * 2 for row in mine]

    got = learner._shared(evaluate, rows)
    return {"seen": sorted(set(seen)), "got": got, "want": [row.token_ids.double() * 2 for row in rows]}


def rank_main(rank: int, world: int, store: str, model_dir: str, episodes_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        episodes = pickle.loads(Path(episodes_file).read_bytes())
        results = {name: update(Path(model_dir), episodes, name, DataParallel(rank, world)) for name in CASES}
        results["shared"] = shared_evaluation(Path(model_dir), episodes, DataParallel(rank, world))
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def episodes(tiny_model_dir: Path) -> list:
    cfg = load_config(None, [*COMMON, f"model.path={tiny_model_dir}"])
    policy, tokenizer = load_model(tiny_model_dir)
    runner = Runner(TorchSampler(policy.eval()), ChatFormat(tokenizer), cfg.to_runner_config())
    result = runner.run(lambda: make("arithmetic"), tasks_for(cfg, 1), seed=5)
    assert len(result.episodes) == 8
    return result.episodes


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir: Path, episodes: list, tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("dp")
    (tmp / "episodes.pkl").write_bytes(pickle.dumps(episodes))
    args = (2, str(tmp / "store"), str(tiny_model_dir), str(tmp / "episodes.pkl"), str(tmp / "out"))
    mp.start_processes(rank_main, args=args, nprocs=2, join=True, start_method="spawn")
    return [torch.load(tmp / f"out.{r}") for r in range(2)]


def test_each_rank_prepares_its_share_and_gets_every_row(two_ranks: list) -> None:
    """Values and reference log-probs are computed once over the ranks, not on every rank: rank r
    evaluates the episodes of its share, and every rank gets every row's result back, in row order."""
    shares = [r["shared"] for r in two_ranks]
    assert shares[0]["seen"] == [0, 1, 2, 3] and shares[1]["seen"] == [4, 5, 6, 7]
    for share in shares:
        assert len(share["got"]) == len(share["want"])
        assert all(torch.equal(g, w) for g, w in zip(share["got"], share["want"], strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_update_as_one(name: str, tiny_model_dir: Path, episodes: list, two_ranks: list) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run: kernels that split work by thread sum in another order
    try:
        one = update(tiny_model_dir, episodes, name, SINGLE)
        again = update(tiny_model_dir, episodes, name, SINGLE)  # one rank twice: the update is deterministic
    finally:
        torch.set_num_threads(threads)
    rank0, rank1 = (r[name] for r in two_ranks)
    for key, value in one["params"].items():
        assert torch.equal(rank0["params"][key], rank1["params"][key]), key  # the ranks never drift apart
        assert (rank0["params"][key] - value).abs().max() <= 1e-5, key
        assert torch.equal(again["params"][key], value), key
    start = load_model(tiny_model_dir)[0]
    moved = max((one["params"][f"policy.{k}"] - v).abs().max().item() for k, v in start.named_parameters())
    assert moved > 2e-5  # the update moved parameters by more than the 1e-5 the comparison allows
    for key in ("policy/loss", "policy/clip_frac", "policy/approx_kl", "policy/entropy", "grad_norm/policy",
                "critic/loss", "grad_norm/critic"):
        if key in one["metrics"]:
            assert rank0["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-6), key


def test_shards_cover_every_episode_once() -> None:
    ids = [4, 9, 2, 7, 5]
    parts = [DataParallel(r, 2).shard(ids) for r in range(2)]
    assert parts == [[4, 9, 2], [7, 5]]
    assert [DataParallel(r, 3).shard([1]) for r in range(3)] == [[1], [], []]
