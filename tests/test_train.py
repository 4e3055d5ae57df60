"""``agentrl train`` through the real CLI: PPO and GRPO run, every trained parameter moves, resuming is
exact, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from agentrl.checkpoint import latest_checkpoint, list_checkpoints
from agentrl.cli import main
from agentrl.critic import critic_from_policy, load_critic
from agentrl.episodes import load_episodes
from agentrl.metrics import ALL_KEYS, read_metrics
from agentrl.models import load_model

ROOT = Path(__file__).resolve().parent.parent
TINY = [  # small enough for a test: 8 one-turn arithmetic episodes per iteration
    "rollout.tasks_per_iteration=4", "rollout.max_concurrent=8", "optim.micro_batch_tokens=256",
    "run.checkpoint_every=1",
]
ROLLOUT_KEYS = (
    "rollout/success_rate", "rollout/reward_mean", "rollout/turns_mean", "rollout/sub_traces_mean",
    "rollout/compactions_mean", "rollout/tool_errors_mean", "rollout/tokens",
)
POLICY_KEYS = ("policy/loss", "policy/clip_frac", "policy/approx_kl", "policy/entropy")
PERF_KEYS = ("perf/tokens_per_s", "perf/seconds_rollout", "perf/seconds_policy", "perf/peak_memory_mb")


def train(tmp: Path, config: str, *extra: str) -> int:
    args = ["train", "--config", str(ROOT / "examples" / config), "--run-dir", str(tmp), "--quiet"]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return main(args)


def changed(before: torch.nn.Module, after: torch.nn.Module) -> list[str]:
    """Names of the parameters that are NOT different between two models of one architecture."""
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    assert b.keys() == a.keys()
    return [name for name in b if torch.equal(b[name], a[name])]


@pytest.mark.parametrize("config", ["ppo_arithmetic.yaml", "grpo_arithmetic.yaml"])
def test_train_runs_and_every_trained_parameter_changes(tmp_path: Path, config: str) -> None:
    run = tmp_path / "run"
    assert train(run, config, "run.iterations=2", "rollout.group_size=2") == 0
    records = read_metrics(run)
    ppo = config.startswith("ppo")
    assert [r["iteration"] for r in records] == [1, 2, 3] if ppo else [1, 2]  # PPO: + 1 critic pre-training
    last = records[-1]
    for key in ROLLOUT_KEYS + POLICY_KEYS + PERF_KEYS + (("critic/loss",) if ppo else ()):
        assert key in last and last[key] is not None and math.isfinite(last[key]), key
    if ppo:  # logged; null (undefined) when the returns have no variance, as with every reward 0
        ev = last["critic/explained_variance"]
        assert (ev is None) == (last["rollout/reward_std"] == 0) and (ev is None or math.isfinite(ev))
    assert all(r["skipped_updates"] == 0 for r in records)
    assert all(r["perf/decode_path"] == 1.0 for r in records)  # the default Qwen2 takes the lean step
    logged = {key for r in records for key in r} - {"iteration"}
    assert logged <= set(ALL_KEYS), logged - set(ALL_KEYS)  # every logged key is in the glossary
    assert last["credit/groups"] >= 1 and "credit/sub_trace_0/adv_var" in last  # the credit diagnostics
    assert ("credit/sub_trace_0/explained_variance" in last) == ppo

    initial, _ = load_model(run / "initial_model")
    final = latest_checkpoint(run)
    assert final is not None and final.name == f"iter_{len(records):06d}"
    trained, _ = load_model(final / "policy")
    assert changed(initial, trained) == []  # every policy parameter moved
    if ppo:
        critic_before = critic_from_policy(initial, seed=0)
        assert changed(critic_before, load_critic(final / "critic")) == []
    else:
        assert not (final / "critic").exists()

    episodes = load_episodes(run / "episodes" / "iter_000001.jsonl")
    assert len(episodes) == 8 and all(e.num_turns == 1 for e in episodes)
    record = json.loads((run / "episodes" / "iter_000001.jsonl").read_text().splitlines()[0])
    assert len(record["sub_traces"][0]["advantages"]) == len(record["sub_traces"][0]["token_ids"])
    assert (run / "config.yaml").is_file() and any((run / "tensorboard").iterdir())


@pytest.mark.parametrize("config", ["ppo_arithmetic.yaml", "grpo_arithmetic.yaml"])
def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path: Path, config: str) -> None:
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train(whole, config, "run.iterations=3") == 0
    assert train(part, config, "run.iterations=2") == 0  # stops after 2 (PPO: 3 with pre-training)
    stopped = len(read_metrics(part))
    assert main(["train", "--resume", str(part), "--iterations", "3", "--quiet"]) == 0
    a, b = read_metrics(whole), read_metrics(part)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            if key.startswith("perf/"):
                continue  # timings and memory differ by nature
            va, vb = ra[key], rb[key]
            assert (va is None and vb is None) or va == pytest.approx(vb, rel=1e-6, abs=1e-9), (
                ra["iteration"], key)
    assert stopped < len(b)
    wa, _ = load_model(latest_checkpoint(whole) / "policy")
    wb, _ = load_model(latest_checkpoint(part) / "policy")
    for (name, pa), (_, pb) in zip(wa.named_parameters(), wb.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name
    assert len(list_checkpoints(part)) == 3  # run.keep_checkpoints: the newest 3 (the best among them)


def test_bad_config_and_resume_errors_are_one_line_exit_2(tmp_path: Path, capsys) -> None:
    config = str(ROOT / "examples" / "ppo_arithmetic.yaml")
    cases = [
        (["--config", config, "--set", "ppo.clip_high=-1"], "ppo.clip_high"),
        (["--config", config, "--set", "ppo.nope=1"], "ppo.nope"),
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["--resume", str(tmp_path / "no_run")], "no_run"),
        ([], "--config"),
    ]
    for argv, named in cases:
        assert main(["train", *argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err, err


def test_a_finished_run_is_not_overwritten(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert train(run, "grpo_arithmetic.yaml", "run.iterations=1") == 0
    before = (run / "metrics.jsonl").read_text()
    assert train(run, "grpo_arithmetic.yaml", "run.iterations=1") == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before
