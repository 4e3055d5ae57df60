"""``agentrl train`` with ``rollout.batching: continuous`` (``agentrl.batching``): multi-turn episodes
train with log-probs the learner reproduces, a run repeats itself from its seed whatever the tools'
timing, a resumed run repeats the uninterrupted one, and the combinations it cannot run are refused."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from agentrl.envs.graph_nav import GraphNav
from transformers import LlamaConfig, LlamaForCausalLM

from agentrl.cli import main
from agentrl.config import load_config
from agentrl.episodes import load_episodes
from agentrl.metrics import read_metrics
from agentrl.models import load_model

ROOT = Path(__file__).resolve().parent.parent
CONTINUOUS = [  # GRPO on graph_nav small: 2 tasks x 4 episodes of 4 turns, each step a random sleep
    "env.name=test_train_continuous:SlowNudged", "env.options={size: small}", "rollout.batching=continuous",
    "rollout.max_turns=4", "rollout.max_response_tokens=16", "run.checkpoint_every=1",
    "grpo.tis_cap=100",  # the learner recomputes the sampled log-probs: the mismatch is logged
]


class SlowNudged(GraphNav):
    """graph_nav where a reply without a tool call gets "Call a tool." back (so every episode runs its
    turns), an action of an odd number of characters earns 0.1 (rewards that differ within a group, for
    an untrained model to learn from), and every step sleeps 0 to 20 ms, drawn from a clock-seeded
    generator: the tools' timing, and so which sessions share a decode step, differs from run to run."""

    timing = random.Random(time.time_ns())
    lock = threading.Lock()

    def on_answer(self, text: str) -> str | None:
        return "Call a tool."

    def step(self, action: str):  # noqa: ANN201 - GraphNav's StepResult
        with SlowNudged.lock:
            delay = SlowNudged.timing.uniform(0.0, 0.02)
        time.sleep(delay)
        result = super().step(action)
        return replace(result, reward=result.reward + 0.1 * (len(action) % 2))


def train(run: Path, *extra: str) -> int:
    args = ["train", "--config", str(ROOT / "examples" / "grpo_graph_nav.yaml"), "--run-dir", str(run),
            "--quiet"]
    for item in [*CONTINUOUS, *extra]:
        args += ["--set", item]
    return main(args)


def test_continuous_batching_trains_multi_turn_episodes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(run, "run.iterations=2") == 0
    records = read_metrics(run)
    assert [r["iteration"] for r in records] == [1, 2]
    for r in records:
        assert r["rollout/episodes"] == 8 and r["rollout/failed_tasks"] == 0
        assert r["rollout/turns_mean"] == 4  # nudged: every episode runs to rollout.max_turns
        assert r["perf/decode_path"] == 1.0 and r["skipped_updates"] == 0
        # the learner's recomputed log-probs are the sampler's: each policy token sits at its place
        assert r["rollout/logprob_mismatch_max"] < 1e-4, r["rollout/logprob_mismatch_max"]
        assert r["rollout/reward_std"] > 0 and r["grad_norm/policy"] > 0
    episodes = load_episodes(run / "episodes" / "iter_000001.jsonl")
    assert len(episodes) == 8
    policy_tokens = 0
    for e in episodes:
        assert e.num_turns == 4 and len({e.group_id for e in episodes}) == 2
        for sub in e.sub_traces:
            n = len(sub.token_ids)
            assert len(sub.loss_mask) == len(sub.logprobs) == n
            sampled = sum(sub.loss_mask)
            assert 4 <= sampled <= 4 * 16  # four actions of 1 to 16 tokens
            policy_tokens += sampled
    assert records[0]["rollout/policy_tokens"] == policy_tokens
    initial, _ = load_model(run / "initial_model")
    trained, _ = load_model(run / "checkpoints" / "iter_000002" / "policy")
    moved = [not torch.equal(a, b) for a, b in zip(initial.parameters(), trained.parameters(), strict=True)]
    assert all(moved)


def test_a_continuous_run_repeats_itself_and_resumes_exactly(tmp_path: Path) -> None:
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train(whole, "run.iterations=3") == 0
    assert train(part, "run.iterations=2") == 0  # a second run: other tool timings, the same episodes
    for i in (1, 2):
        name = f"iter_{i:06d}.jsonl"
        assert (whole / "episodes" / name).read_text() == (part / "episodes" / name).read_text()
    assert main(["train", "--resume", str(part), "--iterations", "3", "--quiet"]) == 0
    a, b = read_metrics(whole), read_metrics(part)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            if not key.startswith("perf/"):  # timings differ by nature
                assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["iteration"], key)
    third = [json.loads(line)["sub_traces"][0]["token_ids"]
             for line in (whole / "episodes" / "iter_000003.jsonl").read_text().splitlines()]
    again = [json.loads(line)["sub_traces"][0]["token_ids"]
             for line in (part / "episodes" / "iter_000003.jsonl").read_text().splitlines()]
    assert third == again  # the resumed iteration sampled the same tokens


def test_continuous_batching_with_the_overlap_plays_on_the_policy_copy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(run, "run.iterations=2", "distributed.overlap=true", "grpo.tis_cap=null") == 0
    records = read_metrics(run)
    assert [r["rollout/policy_lag"] for r in records] == [0.0, 1.0]
    assert all(r["rollout/episodes"] == 8 and r["rollout/turns_mean"] == 4 for r in records)


@pytest.mark.parametrize(("extra", "named"), [
    (["rollout.batching=dynamic"], "rollout.batching"),
    (["rollout.backend=vllm"], "rollout.batching"),
    (["distributed.rollout_workers=1"], "rollout.batching"),
])
def test_continuous_batching_combinations_it_cannot_run_are_one_line_exit_2(
        tmp_path: Path, capsys, extra: list[str], named: str) -> None:
    assert train(tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "run").exists()


def test_a_model_without_the_lean_decode_step_is_refused_naming_the_field(tiny_model_dir: Path) -> None:
    from agentrl.batching import make_runner
    from agentrl.chat import ChatFormat

    _, tokenizer = load_model(tiny_model_dir)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    cfg = load_config(ROOT / "examples" / "grpo_graph_nav.yaml", ["rollout.batching=continuous"])
    with pytest.raises(ValueError, match=r"^rollout\.batching: continuous needs a Qwen2 model.*use static"):
        make_runner(cfg, None, llama, ChatFormat(tokenizer))  # type: ignore[arg-type]
