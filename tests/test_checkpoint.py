"""Checkpoints: a round trip through transformers, RNG restoration, atomic saves under simulated crashes,
pruning, and a toy run that, stopped and resumed, logs the same metrics as one that never stopped."""

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl import checkpoint as ckpt
from agentrl.checkpoint import (
    COMPLETE_MARKER,
    CRITIC_DIR,
    LATEST_FILE,
    POLICY_DIR,
    CheckpointError,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from agentrl.metrics import MetricsLogger, read_metrics
from agentrl.models import load_model

DEAD_PID = 2**31 - 2  # above any Linux pid_max: never a live process


class FakeModel:
    """Anything with ``save_pretrained``: what the checkpoint needs of a policy, tokenizer or critic."""

    def __init__(self, payload: str = "weights") -> None:
        self.payload = payload

    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{type(self).__name__}-{id(self)}.txt").write_text(self.payload)


def _save_fake(run_dir: Path, iteration: int, **kwargs) -> Path:
    return save_checkpoint(run_dir, iteration, policy=FakeModel(), tokenizer=FakeModel(), critic=FakeModel(),
                           optimizers={}, rng_state=capture_rng(), extra={"it": iteration}, **kwargs)


def _draws(gens: dict) -> list:
    return [random.random(), float(np.random.rand()), torch.rand(2).tolist(),
            torch.rand(2, generator=gens["torch"]).tolist(),
            float(gens["numpy"].random()), gens["python"].random()]


def _generators(seed: int) -> dict:
    return {"torch": torch.Generator().manual_seed(seed), "numpy": np.random.default_rng(seed),
            "python": random.Random(seed)}


def test_round_trip_models_optimizers_rng(tmp_path, tiny_model_dir):
    policy, tokenizer = load_model(tiny_model_dir)
    critic, _ = load_model(tiny_model_dir)
    with torch.no_grad():
        critic.model.norm.weight.add_(1.0)  # the critic's weights differ from the policy's
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    policy(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    gens = _generators(7)
    rng = capture_rng(gens)
    expected = _draws(gens)

    path = save_checkpoint(tmp_path, 12, policy=policy, tokenizer=tokenizer, critic=critic,
                           optimizers={"policy": opt.state_dict()}, rng_state=rng, extra={"tasks_seen": 96})

    assert path == tmp_path / "checkpoints" / "iter_000012"
    assert latest_checkpoint(tmp_path) == path
    assert (path / COMPLETE_MARKER).is_file()
    assert (tmp_path / "checkpoints" / LATEST_FILE).read_text().strip() == "iter_000012"
    reloaded, reloaded_tok = load_model(path / POLICY_DIR)
    reloaded_critic = AutoModelForCausalLM.from_pretrained(path / CRITIC_DIR)
    for a, b in ((policy, reloaded), (critic, reloaded_critic)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert reloaded_tok("2 + 3")["input_ids"] == tokenizer("2 + 3")["input_ids"]

    state = load_trainer_state(path)
    assert state.iteration == 12 and state.extra == {"tasks_seen": 96}
    opt2 = torch.optim.AdamW(reloaded.parameters(), lr=1e-3)
    opt2.load_state_dict(state.optimizers["policy"])
    exp_avg = [s["exp_avg"] for s in opt.state.values()]
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(exp_avg, opt2.state.values(), strict=True))

    fresh = _generators(123)  # other seeds: only the restore can make the draws equal
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    restore_rng(state.rng, fresh)
    assert _draws(fresh) == expected


def test_restore_rng_refuses_unknown_or_mismatched_generators():
    state = capture_rng({"a": torch.Generator()})
    with pytest.raises(CheckpointError, match="no saved state for generator 'b'"):
        restore_rng(state, {"b": torch.Generator()})
    with pytest.raises(CheckpointError, match="numpy generator cannot take a saved torch state"):
        restore_rng(state, {"a": np.random.default_rng(0)})


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    first = _save_fake(tmp_path, 1)

    def crash(path, state):
        assert (path.parent / POLICY_DIR).is_dir()  # the policy is already written when it dies
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_trainer_state", crash)
    with pytest.raises(OSError, match="disk full"):
        _save_fake(tmp_path, 2)

    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000001", LATEST_FILE]
    assert load_trainer_state(first).extra == {"it": 1}


def test_hard_crash_leftovers_are_ignored_then_cleaned(tmp_path):
    first = _save_fake(tmp_path, 1)
    root = tmp_path / "checkpoints"
    # A process killed mid-save leaves its temporary directory, even one that got as far as the marker,
    # and maybe its temporary pointer file.
    leftover = root / f"iter_000002.tmp-{DEAD_PID}"
    shutil.copytree(first, leftover)
    (root / f"{LATEST_FILE}.tmp-{DEAD_PID}").write_text("iter_000002.tmp\n")
    assert latest_checkpoint(tmp_path) == first
    assert list_checkpoints(tmp_path) == [first]

    second = _save_fake(tmp_path, 2)

    assert latest_checkpoint(tmp_path) == second
    assert sorted(p.name for p in root.iterdir()) == ["iter_000001", "iter_000002", LATEST_FILE]


def test_latest_pointing_to_an_incomplete_or_missing_checkpoint_falls_back_to_scanning(tmp_path):
    _save_fake(tmp_path, 1)
    third = _save_fake(tmp_path, 3)
    root = tmp_path / "checkpoints"
    shutil.copytree(third, root / "iter_000007")
    (root / "iter_000007" / COMPLETE_MARKER).unlink()
    (root / LATEST_FILE).write_text("iter_000007\n")
    assert latest_checkpoint(tmp_path) == third
    (root / LATEST_FILE).write_text("iter_000009\n")
    assert latest_checkpoint(tmp_path) == third
    with pytest.raises(CheckpointError, match="incomplete"):
        load_trainer_state(root / "iter_000007")
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_resave_of_an_iteration_replaces_it(tmp_path):
    _save_fake(tmp_path, 4)
    path = save_checkpoint(tmp_path, 4, policy=FakeModel("new"), tokenizer=FakeModel(), optimizers={},
                           rng_state=capture_rng(), extra={"second": True})
    assert load_trainer_state(path).extra == {"second": True}
    assert not (path / CRITIC_DIR).exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name] == []


def test_keep_last_prunes_oldest_and_never_the_latest(tmp_path):
    for i in (1, 2, 3, 4):
        _save_fake(tmp_path, i, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000003", "iter_000004"]
    # resumed from an old checkpoint, the new one is latest and is kept though its iteration is lower
    (tmp_path / "checkpoints" / LATEST_FILE).write_text("iter_000003\n")
    _save_fake(tmp_path, 1, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000001"]
    with pytest.raises(ValueError, match="keep_last"):
        _save_fake(tmp_path, 2, keep_last=0)


# ----------------------------------------------------------------------------------------------------
# Resuming a toy run gives the metrics of the uninterrupted run.


class ToyPolicy(torch.nn.Linear):
    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(directory) / "model.pt")


def _toy_run(run_dir: Path, *, iterations: int, stop_after: int | None = None, resume: bool = False) -> None:
    """A loop shaped like the trainer's: random data from every RNG, a step, a log, a checkpoint every 2."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    policy = ToyPolicy(4, 1)
    opt = torch.optim.AdamW(policy.parameters(), lr=0.1)
    gens = {"data": torch.Generator().manual_seed(5)}
    start = 0
    if resume:
        path = latest_checkpoint(run_dir)
        state = load_trainer_state(path)
        policy.load_state_dict(torch.load(path / POLICY_DIR / "model.pt"))
        opt.load_state_dict(state.optimizers["policy"])
        restore_rng(state.rng, gens)
        start = state.iteration
    with MetricsLogger(run_dir, progress=False, tensorboard=False,
                       resume_from_iteration=start if resume else None) as logger:
        for it in range(start + 1, iterations + 1):
            x = torch.randn(8, 4, generator=gens["data"]) + float(np.random.rand()) + random.random()
            loss = (policy(x) - torch.rand(8, 1)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            logger.log(it, {"policy/loss": loss.item()})
            if it == stop_after:
                return  # killed after logging, before this iteration's checkpoint
            if it % 2 == 0:
                save_checkpoint(run_dir, it, policy=policy, tokenizer=FakeModel(),
                                optimizers={"policy": opt.state_dict()}, rng_state=capture_rng(gens))


def test_resumed_run_logs_the_same_metrics_as_an_uninterrupted_one(tmp_path):
    _toy_run(tmp_path / "a", iterations=6)
    _toy_run(tmp_path / "b", iterations=6, stop_after=3)
    assert [r["iteration"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3]
    _toy_run(tmp_path / "b", iterations=6, resume=True)
    assert read_metrics(tmp_path / "b") == read_metrics(tmp_path / "a")
    assert len(read_metrics(tmp_path / "a")) == 6
    names = ["iter_000002", "iter_000004", "iter_000006", "latest"]
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == names


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    from agentrl.checkpoint import best_checkpoint

    for i in range(1, 7):
        _save_fake(tmp_path, i)
    # success by iteration: iteration 2 is the best; 4 ties 5 (newest wins a tie); 6 has no value
    records = [{"iteration": i, "rollout/success_rate": s}
               for i, s in [(1, 0.1), (2, 0.9), (3, 0.2), (4, 0.5), (5, 0.5), (6, None)]]
    best = best_checkpoint(tmp_path, records, "rollout/success_rate")
    assert best is not None and best.name == "iter_000002"
    assert best_checkpoint(tmp_path, records, "rollout/success_rate", mode="min").name == "iter_000001"
    assert best_checkpoint(tmp_path, records[3:5], "rollout/success_rate").name == "iter_000005"
    assert best_checkpoint(tmp_path, records, "no/such_metric") is None
    prune_checkpoints(tmp_path, keep_last=2, also_keep=[best])
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000002", "iter_000005", "iter_000006"]
