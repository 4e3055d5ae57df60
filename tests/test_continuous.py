"""Continuous batching (``agentrl.continuous`` over ``agentrl.slot_sampler``): the same greedy episodes as
the runner's static rounds, sampled episodes that depend on the seed alone (not on the tools' timing),
tools that overlap sampling, and the runner's failure handling kept."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import torch
from agentrl.envs.graph_nav import GraphNav
from transformers import LlamaConfig, LlamaForCausalLM

from agentrl.chat import ChatFormat
from agentrl.compaction import CompactionConfig
from agentrl.continuous import ContinuousRunner
from agentrl.models import load_model
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner, RunnerConfig, Task
from agentrl.sampling import SamplingParams
from agentrl.slot_sampler import SlotSampler


class Nudged(GraphNav):
    """graph_nav that nudges a reply without a tool call, optionally sleeping in each step (a slow tool)
    for a random time drawn from ``delays`` (shared, so the timing varies between runs)."""

    delays: random.Random | None = None
    in_step = 0
    most_in_step = 0
    lock = threading.Lock()

    def on_answer(self, text: str) -> str | None:
        return "Call a tool."

    def step(self, action: str):  # noqa: ANN201
        cls = type(self)
        with cls.lock:
            cls.in_step += 1
            cls.most_in_step = max(cls.most_in_step, cls.in_step)
            delay = cls.delays.uniform(0.0, 0.03) if cls.delays else 0.0
        try:
            time.sleep(delay)
            return super().step(action)
        finally:
            with cls.lock:
                cls.in_step -= 1


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    model, tokenizer = load_model(tiny_model_dir)
    return model.eval(), ChatFormat(tokenizer)


def _config(temperature: float, **extra) -> RunnerConfig:
    values = dict(max_response_tokens=16, context_budget=1024, max_turns=16, max_compactions=2,
                  temperature=temperature, max_concurrent=4,
                  compaction=CompactionConfig("policy", keep_last_turns=1, max_summary_tokens=24))
    return RunnerConfig(**{**values, **extra})


TASKS = [Task(seed, f"g{seed // 2}") for seed in range(6)]  # 6 tasks in 4 lanes: lanes are reused


def _continuous(model, chat, config, tasks=TASKS, seed=3, env=Nudged):
    sampler = SlotSampler(model, slots=config.max_concurrent, capacity=config.context_budget + 1)
    return ContinuousRunner(sampler, chat, config).run(lambda: env(size="small"), tasks, seed=seed)


def test_greedy_episodes_are_the_static_rounds_episodes_across_compaction(tiny) -> None:
    model, chat = tiny
    config = _config(0.0)
    static = Runner(TorchSampler(model), chat, config).run(lambda: Nudged(size="small"), TASKS, seed=3)
    continuous = _continuous(model, chat, config)
    assert len(continuous.episodes) == len(static.episodes) == 6 and not continuous.failures
    assert all(e.num_compactions >= 1 for e in continuous.episodes)  # summaries included
    for a, b in zip(continuous.episodes, static.episodes, strict=True):
        assert (a.task_id, a.end, a.truncation_reason, a.num_turns) == (b.task_id, b.end, b.truncation_reason,
                                                                       b.num_turns)
        for sa, sb in zip(a.sub_traces, b.sub_traces, strict=True):
            assert sa.token_ids == sb.token_ids and sa.loss_mask == sb.loss_mask
            assert sa.summary_start == sb.summary_start and sa.rewards == sb.rewards
            pairs = [(x, y) for x, y in zip(sa.logprobs, sb.logprobs, strict=True) if x is not None]
            assert max(abs(x - y) for x, y in pairs) <= 1e-4  # batched differently: float rounding
    assert continuous.metrics["episodes"] == 6


def test_sampled_episodes_depend_on_the_seed_not_on_the_tools_timing(tiny) -> None:
    """Tools that take random times (different in each run) reorder which sessions share a step and
    when each joins; the episodes are identical, log-probs to the bit; another seed changes them."""
    model, chat = tiny
    config = _config(1.0)
    Nudged.delays = random.Random(1)
    try:
        first = _continuous(model, chat, config)
        Nudged.delays = random.Random(2)
        second = _continuous(model, chat, config)
    finally:
        Nudged.delays = None
    assert first.episodes == second.episodes
    other = _continuous(model, chat, config, seed=4)
    assert [e.sub_traces[0].token_ids for e in other.episodes] != [
        e.sub_traces[0].token_ids for e in first.episodes]


def test_tools_run_while_the_others_decode(tiny) -> None:
    model, chat = tiny
    Nudged.delays, Nudged.most_in_step = random.Random(0), 0
    try:
        result = _continuous(model, chat, _config(1.0, max_turns=4))
    finally:
        Nudged.delays = None
    assert len(result.episodes) == 6
    assert Nudged.most_in_step >= 2  # steps of several episodes overlapped, on the pool's threads


class Crashing(Nudged):
    """Raises in ``step`` at turn 2 for odd seeds, and in ``reset`` for seed 4."""

    def reset(self, *, seed=None, options=None):  # noqa: ANN001, ANN201
        if seed == 4:
            raise RuntimeError("reset exploded")
        self.crash = seed % 2 == 1
        return super().reset(seed=seed, options=options)

    def step(self, action: str):  # noqa: ANN201
        if self.crash and self.num_turns == 1:
            raise RuntimeError("step exploded")
        return super().step(action)


def test_a_crashing_environment_costs_its_own_episode_or_task(tiny) -> None:
    model, chat = tiny
    result = _continuous(model, chat, _config(1.0, max_turns=4), env=Crashing)
    assert [f.task.seed for f in result.failures] == [4]
    by_seed = {e.info["seed"]: e for e in result.episodes}
    assert sorted(by_seed) == [0, 1, 2, 3, 5]
    assert all(by_seed[s].truncation_reason == "env_error" for s in (1, 3, 5))
    assert all(by_seed[s].truncation_reason == "max_turns" for s in (0, 2))


def test_the_slot_sampler_needs_the_lean_step_and_free_slots(tiny) -> None:
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="continuous batching needs the lean decode step"):
        SlotSampler(llama, slots=2, capacity=64)
    model, _ = tiny
    sampler = SlotSampler(model, slots=2, capacity=64)
    assert sampler.capacity == 0  # no cache memory until a session needs it (an unused sampler holds none)
    sampler.open(1, [5, 6, 7], slot=0)
    with pytest.raises(ValueError, match="slot: 0 is held by session 1"):
        sampler.open(2, [5], slot=0)
    sampler.begin(1, SamplingParams(temperature=0.0, max_new_tokens=100))  # more than its 64 columns
    assert sampler.capacity >= 3 + 100 + 1  # grown
    while not (done := sampler.step()):
        pass
    assert done[0][0] == 1 and len(done[0][1].token_ids) <= 100
    reference = TorchSampler(model, lean_decode=False)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=100)
    want = reference.generate([reference.open([5, 6, 7])], greedy)
    assert done[0][1].token_ids == want[0].token_ids
    torch.testing.assert_close(torch.tensor(done[0][1].logprobs), torch.tensor(want[0].logprobs),
                               atol=1e-4, rtol=0)
