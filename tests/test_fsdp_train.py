"""``agentrl train`` with FSDP2 learner ranks: a checkpoint written by rank 0 from the gathered shards has
the format of a one-process run's, so an FSDP2 run stopped on 2 ranks resumes on 1 rank with ddp, a
one-process run resumes on 2 FSDP2 ranks, and both learn what an uninterrupted one-process run does
(within float rounding). The rollout runs in rank 0's process from its whole copy of the policy, so the
episodes after the first update show that the gathered weights reached it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agentrl.cli import main
from agentrl.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["rollout.tasks_per_iteration=4", "rollout.max_concurrent=8", "optim.micro_batch_tokens=256",
            "run.checkpoint_every=1", "optim.shared_prefix=0"]
FSDP2 = ["distributed.learner_ranks=2", "distributed.learner_sharding=fsdp2"]
DDP1 = ["distributed.learner_ranks=1", "distributed.learner_sharding=ddp"]
# ties of the clipped value term at the first critic pass (tests/test_scale_out_train.py says why)
TIES = ("critic/clip_frac",)


def args(run_dir: Path, iterations: int, *extra: str) -> list[str]:
    out = ["train", "--config", str(ROOT / "examples" / "ppo_arithmetic.yaml"), "--run-dir", str(run_dir),
           "--quiet", "--iterations", str(iterations)]
    return out + [x for item in [*SETTINGS, *extra] for x in ("--set", item)]


def resume(run_dir: Path, iterations: int, *extra: str) -> list[str]:
    out = ["train", "--resume", str(run_dir), "--quiet", "--iterations", str(iterations)]
    return out + [x for item in extra for x in ("--set", item)]


def learned(run_dir: Path) -> list[dict]:
    """What the run computed, without wall-clock timings and tie counts."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and "seconds" not in k and k not in TIES}
            for r in read_metrics(run_dir)]


def assert_same(got: list[dict], expected: list[dict]) -> None:
    assert [r["iteration"] for r in got] == [r["iteration"] for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if value is None or mine[key] is None:
                assert mine[key] is value, (mine["iteration"], key)
            else:
                assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (mine["iteration"], key)


def assert_one_rank_format(checkpoint: Path) -> None:
    """Whole tensors in plain Hugging Face directories and a plain optimiser state."""
    config = json.loads((checkpoint / "policy" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    optimizer = state["extra"]["learner"]["policy_optimizer"]
    from agentrl.models import load_model

    policy = load_model(checkpoint / "policy")[0]
    params = [p for p in policy.parameters() if p.requires_grad]
    assert sorted(optimizer["state"]) == list(range(len(params)))
    for index, p in enumerate(params):
        assert type(optimizer["state"][index]["exp_avg"]) is torch.Tensor
        assert optimizer["state"][index]["exp_avg"].shape == p.shape


def test_fsdp2_checkpoints_resume_with_either_switch_at_any_rank_count(tmp_path: Path) -> None:
    # 4 records: the critic's pre-training iteration (ppo.value_pretrain_steps 1), then 3 updates
    assert main(args(tmp_path / "one", 3)) == 0
    expected = learned(tmp_path / "one")
    assert len(expected) == 4

    # 2 FSDP2 ranks to iteration 3, checkpointed only then: iteration 3 samples from rank 0's copy as the
    # gathering after update 2 left it (a checkpoint would gather too); then 1 ddp rank
    sharded = tmp_path / "sharded"
    assert main(args(sharded, 2, *FSDP2, "run.checkpoint_every=0")) == 0
    assert_one_rank_format(sharded / "checkpoints" / "iter_000003")
    assert main(resume(sharded, 3, *DDP1)) == 0
    assert_same(learned(sharded), expected)

    whole = tmp_path / "whole"  # 1 ddp rank to iteration 2, then 2 FSDP2 ranks
    assert main(args(whole, 1)) == 0
    assert main(resume(whole, 3, *FSDP2)) == 0
    assert_same(learned(whole), expected)
    assert_one_rank_format(whole / "checkpoints" / "iter_000004")
