"""One-step off-policy overlap: the next rollout runs during the update with the weights before it, the
staged weights reach the rollout only between two rollouts, the lag is logged and never above one."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from agentrl.chat import ChatFormat
from agentrl.cli import main
from agentrl.config import load_config
from agentrl.episodes import load_episodes
from agentrl.metrics import read_metrics
from agentrl.models import load_model
from agentrl.overlap import OverlappedRollout, PolicyCopy
from agentrl.registry import make
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner, RunResult
from agentrl.train import _seed, tasks_for

ROOT = Path(__file__).resolve().parent.parent


class Recording:
    """A rollout that records which weights version each run saw, and whether a load met a run."""

    def __init__(self) -> None:
        self.weights, self.seen, self.running, self.clash = 0, [], threading.Event(), False
        self.sampler = self

    def load_weights(self, named) -> None:
        self.clash |= self.running.is_set()
        self.weights = dict(named)["w"].item()

    def run(self, tasks, *, seed: int) -> RunResult:
        self.running.set()
        self.seen.append((seed, self.weights))
        self.running.clear()
        return RunResult([], [], {})

    def close(self) -> None:
        pass


def test_iteration_k_plus_1_samples_with_the_weights_of_k_minus_1() -> None:
    inner = Recording()
    rollout = OverlappedRollout(inner, inner)
    lags = []
    for k in range(1, 5):
        result = rollout.run([], seed=k, upcoming=(([], k + 1)) if k < 4 else None)
        lags.append(result.metrics["policy_lag"])
        rollout.load_weights([("w", torch.tensor(k))])  # update k
    rollout.close()
    # iteration 1 with w0; 2 started before update 1 (w0); 3 after update 1 (w1); 4 after update 2
    assert inner.seen == [(1, 0), (2, 0), (3, 1), (4, 2)]
    assert lags == [0.0, 1.0, 1.0, 1.0] and not inner.clash


def test_policy_copy_takes_the_weights_and_leaves_the_policy(tiny_model_dir: Path) -> None:
    policy, _ = load_model(tiny_model_dir)
    target = PolicyCopy(policy)
    changed = {k: v + 1 for k, v in policy.state_dict().items()}
    target.load_weights(changed.items())
    name = next(iter(changed))
    assert torch.equal(target.model.state_dict()[name], changed[name])
    assert not torch.equal(policy.state_dict()[name], changed[name])


def test_train_with_overlap_logs_the_lag_and_samples_with_the_previous_weights(tmp_path: Path,
                                                                              tiny_model_dir: Path) -> None:
    sets = ["rollout.tasks_per_iteration=2", "rollout.max_concurrent=8", "optim.micro_batch_tokens=256",
            "run.checkpoint_every=0", "distributed.overlap=true", f"model.path={tiny_model_dir}",
            "optim.actor_lr=1e-3"]
    args = ["train", "--config", str(ROOT / "examples" / "grpo_arithmetic.yaml"), "--run-dir", str(tmp_path),
            "--quiet", "--iterations", "3"]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    records = read_metrics(tmp_path)
    assert [r["rollout/policy_lag"] for r in records] == [0.0, 1.0, 1.0]
    assert all(r["policy/loss"] == r["policy/loss"] for r in records)  # finite, not NaN
    # iteration 2 was sampled with the initial weights, while iteration 1 updated
    cfg = load_config(ROOT / "examples" / "grpo_arithmetic.yaml", sets)
    policy, tokenizer = load_model(tiny_model_dir)
    runner = Runner(TorchSampler(policy.eval()), ChatFormat(tokenizer), cfg.to_runner_config())
    env = cfg.env
    initial = runner.run(lambda: make(env.name, **env.options), tasks_for(cfg, 2), seed=_seed(cfg, 2, 0))
    logged = load_episodes(tmp_path / "episodes" / "iter_000002.jsonl")
    # (without the overlap the same check fails: iteration 2 samples with the updated weights)
    assert [e.sub_traces[0].token_ids for e in logged] == [e.sub_traces[0].token_ids
                                                           for e in initial.episodes]
