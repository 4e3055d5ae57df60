"""Continuous batching (``agentrl.continuous``) against the runner's static rounds, side by side.

    python benchmarks/continuous_batching.py                     # both figures, tiny model
    python benchmarks/continuous_batching.py --size small --figure growth

Two figures:

- ``tools``: uneven action lengths and a tool that takes 20 ms. graph_nav ``small`` episodes where every
  environment step sleeps ``--tool-ms`` (the time of a real tool call; sleeping leaves the CPU to the
  sampler, as a subprocess or a remote call does) and a reply without a tool call gets a nudge back, so
  every episode runs ``--turns`` turns. Actions have uneven lengths: the model's stop token
  (``<|im_end|>``) has its embedding row centred and scaled by ``--stop-scale`` (``uneven_stops``), so
  a sampled action stops after a few to ``max_response_tokens`` tokens. Temperature 1.
  ``static``: ``Runner.run`` over ``TorchSampler`` (every round waits for its longest action, then the
  environments step one after the other); ``continuous``: ``ContinuousRunner`` over ``SlotSampler``.
  Reported: sampled tokens per wall-clock second of each, and the ratio continuous/static (target
  >= 1.5x). The two sample different (equally distributed) episodes, so tokens/s is compared, not time.
- ``growth``: the runner-throughput workload (graph_nav ``medium``, greedy, 32-token actions that never
  stop early, no tool delay, 8 episodes) with T and 2T turns through the continuous runner; the ratio of
  rollout CPU times (the process's, all threads) time(2T) / time(T) (target <= 2.1x), and the static
  runner's beside it.

Repeats alternate the arms (the order flips each repeat) after a warm-up of each; medians are reported,
with each repeat's ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from agentrl.envs.graph_nav import GraphNav

from agentrl.chat import ChatFormat
from agentrl.compaction import CompactionConfig
from agentrl.continuous import ContinuousRunner
from agentrl.models import init_model, load_model
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner, RunnerConfig, RunResult, Task
from agentrl.slot_sampler import SlotSampler


class SlowNudged(GraphNav):
    """graph_nav whose every step takes ``delay`` seconds more, and where a reply without a tool call
    gets "Call a tool." back instead of ending the episode."""

    delay = 0.0

    def on_answer(self, text: str) -> str | None:
        return "Call a tool."

    def step(self, action: str):  # noqa: ANN201 - GraphNav's StepResult
        if self.delay:
            time.sleep(self.delay)
        return super().step(action)


def make_env(size: str, delay: float) -> Callable[[], GraphNav]:
    def make() -> GraphNav:
        env = SlowNudged(size=size)
        env.delay = delay
        return env
    return make


def run_arm(arm: str, model: torch.nn.Module, chat: ChatFormat, config: RunnerConfig,
            make: Callable[[], GraphNav], tasks: Sequence[Task]) -> tuple[RunResult, float, float]:
    """One rollout of ``arm``: its result, wall seconds and process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    if arm == "static":
        result = Runner(TorchSampler(model), chat, config).run(make, tasks, seed=0)
    else:
        sampler = SlotSampler(model, slots=min(config.max_concurrent, len(tasks)),
                              capacity=config.context_budget + 1)
        result = ContinuousRunner(sampler, chat, config).run(make, tasks, seed=0)
    if result.failures:
        raise RuntimeError(f"{arm}: tasks failed: {result.failures}")
    return result, time.perf_counter() - wall, time.process_time() - cpu


def sampled_tokens(result: RunResult) -> int:
    return int(result.metrics["policy_tokens"])


def tools_figure(model: torch.nn.Module, chat: ChatFormat, args: argparse.Namespace) -> list[str]:
    config = RunnerConfig(max_response_tokens=args.max_response_tokens, context_budget=4096,
                          max_turns=args.turns, compaction=CompactionConfig(strategy="none"),
                          temperature=1.0, max_concurrent=args.episodes)
    tasks = [Task(seed, str(seed)) for seed in range(args.episodes)]
    make = make_env("small", args.tool_ms / 1000)
    rates: dict[str, list[float]] = {"static": [], "continuous": []}
    lengths: dict[str, list[float]] = {"static": [], "continuous": []}
    arms = ("static", "continuous")
    for arm in arms:
        run_arm(arm, model, chat, config, make, tasks[:2])  # warm-up
    for r in range(args.repeats):
        for arm in arms if r % 2 == 0 else reversed(arms):
            result, wall, _ = run_arm(arm, model, chat, config, make, tasks)
            rates[arm].append(sampled_tokens(result) / wall)
            turns = sum(e.num_turns for e in result.episodes)
            lengths[arm].append(sampled_tokens(result) / turns)
    ratios = [c / s for c, s in zip(rates["continuous"], rates["static"], strict=True)]
    return [
        f"\n## Uneven actions and a {args.tool_ms:g} ms tool: {args.episodes} episodes x {args.turns} turns, "
        f"max {args.max_response_tokens} tokens an action, {args.repeats} repeats (wall time)",
        "",
        "| arm | tokens/s (median) | mean action tokens |",
        "|---|---|---|",
        *(f"| {arm} | {statistics.median(rates[arm]):.1f} | {statistics.median(lengths[arm]):.1f} |"
          for arm in arms),
        "",
        "ratio continuous/static by repeat: " + ", ".join(f"{x:.2f}" for x in ratios),
        f"throughput ratio continuous/static: {statistics.median(ratios):.2f}",
    ]


def growth_figure(model: torch.nn.Module, chat: ChatFormat, args: argparse.Namespace) -> list[str]:
    make = make_env("medium", 0.0)
    tasks = [Task(seed, str(seed)) for seed in range(8)]
    arms = ("static", "continuous")

    def config(turns: int) -> RunnerConfig:
        return RunnerConfig(max_response_tokens=32, context_budget=4096, max_turns=turns,
                            compaction=CompactionConfig(strategy="none"), temperature=0.0, max_concurrent=8)

    for arm in arms:
        run_arm(arm, model, chat, config(2), make, tasks[:2])
    seconds: dict[tuple[str, int], list[float]] = {}
    for r in range(args.repeats):
        for turns in (args.growth_turns, 2 * args.growth_turns):
            for arm in arms if r % 2 == 0 else reversed(arms):
                _, _, cpu = run_arm(arm, model, chat, config(turns), make, tasks)
                seconds.setdefault((arm, turns), []).append(cpu)
    t = args.growth_turns
    lines = [f"\n## Doubling the turns: 8 graph_nav medium episodes, greedy, 32-token actions, {t} and "
             f"{2 * t} turns, {args.repeats} repeats (process CPU time)", "",
             f"| arm | {t} turns s | {2 * t} turns s | growth by repeat | growth (medians) |",
             "|---|---|---|---|---|"]
    for arm in arms:
        a, b = seconds[(arm, t)], seconds[(arm, 2 * t)]
        each = ", ".join(f"{y / x:.2f}" for x, y in zip(a, b, strict=True))
        lines.append(f"| {arm} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | {each} | "
                     f"{statistics.median(b) / statistics.median(a):.2f} |")
    return lines


def uneven_stops(model: torch.nn.Module, chat: ChatFormat, scale: float) -> None:
    """Make sampled actions stop after a few to ``max_response_tokens`` tokens: the stop token's
    embedding row (tied: its output row) loses its component along the mean final hidden state of the
    positions of a sampled action (32 tokens after a graph_nav prompt, temperature 1, seed 0), then is
    scaled by ``scale``. Its logit then varies around 0 from one action position to the next, on either
    default model. Scaling the row alone works only where that logit's sign already varies: on the
    small model it is negative at every action position, so a larger row made stopping rarer and every
    action ran to the limit. (The prompt's positions would not do: their mean hidden state differs.)"""
    env = SlowNudged(size="small")
    text, _ = env.reset(seed=0)
    ids = chat.prompt_ids(env.system_prompt, [t.schema() for t in env.tools], text)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(32):  # no cache: a few seconds at most, once
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            ids.append(int(torch.multinomial(logits.softmax(-1), 1, generator=generator)))
        # the inner model's output is after the final norm: what the output rows meet
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -33:-1]
        mean = hidden.mean(0)
        row = model.get_input_embeddings().weight[chat.im_end_id]
        row -= (row @ mean) / (mean @ mean) * mean
        row *= scale


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["tiny", "small"])
    p.add_argument("--figure", default="both", choices=["tools", "growth", "both"])
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--max-response-tokens", type=int, default=32)
    p.add_argument("--tool-ms", type=float, default=20.0)
    p.add_argument("--stop-scale", type=float, default=40.0, help="scale of the stop token's embedding row")
    p.add_argument("--growth-turns", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    lines = [f"model: default {args.size}; torch threads 1"]
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_model(init_model(Path(tmp) / "model", size=args.size, seed=0))
        model.eval()
        chat = ChatFormat(tokenizer)
        if args.figure in ("growth", "both"):
            lines += growth_figure(model, chat, args)
        if args.figure in ("tools", "both"):
            uneven_stops(model, chat, args.stop_scale)
            lines += tools_figure(model, chat, args)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
