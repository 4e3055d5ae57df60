"""Runner throughput on graph_nav against a naive loop that re-encodes the whole history every turn.

    python benchmarks/runner_throughput.py                      # tiny model, 8 episodes, 16 and 32 turns
    python benchmarks/runner_throughput.py --size small --episodes 4 --turns 8 --repeats 3

Both loops play the same episodes with the same model and greedy decoding, measured side by side in one
process with interleaved repeats (the order alternates every repeat; the median is reported):

- ``runner``: ``agentrl.runner.Runner`` over ``agentrl.rollout.TorchSampler``. Each session keeps its KV
  cache, so a turn encodes only the last sampled token and the new observation.
- ``naive``: every turn, one batched ``model.generate`` (transformers) over all unfinished episodes, the
  full token history of each left-padded, so the whole history is re-encoded every turn. The history is
  built exactly as the runner builds it (prompt, sampled ids as sampled, ``ChatFormat.observation_ids``).
- ``naive-1`` (``--single``): the same loop one episode at a time (batch 1, no padding).

What is reported: sampled tokens per second of each loop and the ratio runner/naive (target >= 3x), and the
growth of each loop's rollout time when the turns per episode double (target for the runner <= 2.3x).
Ratios are the result; absolute times depend on the machine.

Departures from a real run, so that both loops do identical work:
- A random model almost never calls a tool, and graph_nav ends the episode on a reply without a tool call.
  ``KeepGoing`` (a ``GraphNav`` subclass) answers such a reply with the user message "Call a tool." instead,
  so every episode runs for exactly ``--turns`` turns (unless it happens to walk out of the maze).
- Compaction is off (strategy ``none``) and the context budget is large, so no episode is compacted or
  cut; the script checks that every episode ended by ``max_turns`` (or by the environment).
- Greedy decoding (temperature 0). Left padding and a different batch shape change float rounding, so the
  two loops can pick different tokens where the top two logits nearly tie (a random model's logits are
  close together); the script reports the fraction of turns whose tokens match, and the turns each
  loop sampled, so a mismatch is visible rather than hidden in the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from agentrl.envs.graph_nav import GraphNav

from agentrl.chat import ChatFormat
from agentrl.compaction import CompactionConfig
from agentrl.models import init_model, load_model
from agentrl.rollout import TorchSampler
from agentrl.runner import Runner, RunnerConfig, Task
from agentrl.types import Episode

CONTEXT_BUDGET = 32768  # the default models' max positions: large enough that no window fills up
NUDGE = "Call a tool."

Turns = list[tuple[int, ...]]  # one episode's sampled tokens, one tuple per turn


class KeepGoing(GraphNav):
    """graph_nav where a reply without a tool call gets ``NUDGE`` back instead of ending the episode."""

    def on_answer(self, text: str) -> str | None:
        """Send ``NUDGE`` back as a user message; the episode goes on."""
        return NUDGE


@dataclass(frozen=True)
class Workload:
    """The episodes both loops play.

    Attributes:
        seeds: one graph_nav episode per seed.
        turns: turns per episode (the runner's ``max_turns``).
        max_response_tokens: the most tokens of one turn.
        env_size: the graph_nav preset.
    """

    seeds: tuple[int, ...]
    turns: int
    max_response_tokens: int
    env_size: str


@dataclass(frozen=True)
class Rollout:
    """What one loop did: each episode's sampled turns, and the wall-clock seconds it took."""

    turns: list[Turns]
    seconds: float

    @property
    def sampled_tokens(self) -> int:
        """Sampled tokens over all episodes and turns."""
        return sum(len(t) for episode in self.turns for t in episode)

    @property
    def tokens_per_s(self) -> float:
        return self.sampled_tokens / self.seconds


# ---- the two loops ------------------------------------------------------------------------------------


def runner_rollout(model: torch.nn.Module, chat: ChatFormat, work: Workload) -> Rollout:
    """Play ``work`` with the ``Runner`` and ``TorchSampler`` (all episodes in one batch)."""
    config = RunnerConfig(
        max_response_tokens=work.max_response_tokens,
        context_budget=CONTEXT_BUDGET,
        max_turns=work.turns,
        compaction=CompactionConfig(strategy="none"),
        temperature=0.0,
        max_concurrent=len(work.seeds),
    )
    runner = Runner(TorchSampler(model), chat, config)
    tasks = [Task(seed=s, group_id=str(s)) for s in work.seeds]
    start = time.perf_counter()
    result = runner.run(lambda: KeepGoing(size=work.env_size), tasks, seed=0)
    seconds = time.perf_counter() - start
    if result.failures:
        raise RuntimeError(f"runner: tasks failed: {result.failures}")
    for e in result.episodes:
        if e.truncated and e.truncation_reason != "max_turns":
            raise RuntimeError(f"runner: episode {e.task_id} cut by {e.truncation_reason}; the work differs")
    return Rollout([sampled_turns(e) for e in result.episodes], seconds)


def sampled_turns(episode: Episode) -> Turns:
    """The sampled tokens of each turn: the runs of loss-mask 1 (observations always separate two turns)."""
    turns: Turns = []
    for sub in episode.sub_traces:
        run: list[int] = []
        for token, mask in zip(sub.token_ids, sub.loss_mask, strict=True):
            if mask:
                run.append(token)
            elif run:
                turns.append(tuple(run))
                run = []
        if run:
            turns.append(tuple(run))
    return turns


@dataclass
class _NaiveEpisode:
    env: KeepGoing
    history: list[int]
    turns: Turns
    done: bool = False


def naive_rollout(
    model: torch.nn.Module, chat: ChatFormat, work: Workload, *, batched: bool = True
) -> Rollout:
    """Play ``work`` by calling ``model.generate`` on each episode's full history every turn.

    ``batched``: one ``generate`` per turn over all unfinished episodes (left-padded); otherwise the
    episodes are played one after the other, batch 1.
    """
    start = time.perf_counter()
    groups = [work.seeds] if batched else [(s,) for s in work.seeds]
    turns = [t for seeds in groups for t in _naive_group(model, chat, work, seeds)]
    return Rollout(turns, time.perf_counter() - start)


def _naive_group(
    model: torch.nn.Module, chat: ChatFormat, work: Workload, seeds: Sequence[int]
) -> list[Turns]:
    episodes = []
    for seed in seeds:
        env = KeepGoing(size=work.env_size)
        task, _ = env.reset(seed=seed)
        prompt = chat.prompt_ids(env.system_prompt, [t.schema() for t in env.tools], task)
        episodes.append(_NaiveEpisode(env, prompt, []))
    while active := [e for e in episodes if not e.done]:
        sampled = naive_generate(model, chat, [e.history for e in active], work.max_response_tokens)
        for episode, ids in zip(active, sampled, strict=True):
            episode.turns.append(ids)
            episode.history += ids
            result = episode.env.step(chat.action_text(ids))
            episode.done = result.terminated or result.truncated or len(episode.turns) >= work.turns
            if not episode.done:
                episode.history += chat.observation_ids(result.observation, sampled_ids=ids)
    return [e.turns for e in episodes]


def naive_generate(
    model: torch.nn.Module, chat: ChatFormat, histories: Sequence[Sequence[int]], max_new_tokens: int
) -> list[tuple[int, ...]]:
    """One greedy turn per history with ``model.generate``: left-padded (B, L) input, new tokens cut after
    the first stop token (``generate`` pads finished rows)."""
    pad = chat.tokenizer.pad_token_id
    width = max(len(h) for h in histories)
    ids_BL = torch.full((len(histories), width), pad, dtype=torch.long)
    mask_BL = torch.zeros(len(histories), width, dtype=torch.long)
    for i, h in enumerate(histories):
        ids_BL[i, width - len(h) :] = torch.tensor(h, dtype=torch.long)
        mask_BL[i, width - len(h) :] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids_BL,
            attention_mask=mask_BL,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(chat.stop_token_ids),
            pad_token_id=pad,
        )
    stop = set(chat.stop_token_ids)
    results = []
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
        results.append(tuple(row[:end]))
    return results


# ---- comparing and reporting --------------------------------------------------------------------------


def match(a: Rollout, b: Rollout) -> dict[str, float]:
    """How far two rollouts of the same workload agree: turns with identical tokens, whole episodes."""
    pairs = list(zip(a.turns, b.turns, strict=True))
    # an episode one loop ended early (walked out of the maze) compares only its common turns
    same_turns = sum(x == y for ea, eb in pairs for x, y in zip(ea, eb, strict=False))
    all_turns = sum(max(len(ea), len(eb)) for ea, eb in pairs)
    same_episodes = sum(ea == eb for ea, eb in pairs)
    return {"turns": same_turns / all_turns, "episodes": same_episodes / len(a.turns)}


def timed_repeats(loops: dict[str, Callable[[], Rollout]], repeats: int) -> dict[str, list[Rollout]]:
    """Run every loop ``repeats`` times, interleaved; the order is reversed on every other repeat."""
    runs: dict[str, list[Rollout]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            runs[name].append(loops[name]())
            print(f"  repeat {r + 1}/{repeats} {name:>12}: {runs[name][-1].seconds:7.2f} s", flush=True)
    return runs


def median_seconds(rollouts: Sequence[Rollout]) -> float:
    return statistics.median(r.seconds for r in rollouts)


def report(args: argparse.Namespace, runs: dict[str, list[Rollout]], info: dict) -> tuple[str, dict]:
    """The Markdown tables and the same numbers as a dict."""
    t, t2 = args.turns, 2 * args.turns
    loops = ["runner", "naive"] + (["naive-1"] if args.single else [])
    lines = [
        f"Model: {info['model']}; {len(args_seeds(args))} graph_nav `{args.env_size}` episodes; "
        f"max_response_tokens {args.max_response_tokens}; greedy; median of {args.repeats} repeats; "
        f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}.",
        "",
        "| loop | turns/episode | sampled tokens | median s (min-max) | tokens/s | runner speed-up "
        "(on min s) | turns matching runner |",
        "|---|---|---|---|---|---|---|",
    ]
    results: dict = {"config": vars(args) | info, "rows": []}
    for turns in (t, t2):
        base = runs[f"runner@{turns}"]
        for loop in loops:
            key = f"{loop}@{turns}"
            if key not in runs:
                continue
            rs = runs[key]
            secs = median_seconds(rs)
            tokens = rs[0].sampled_tokens
            speedup = median_seconds(rs) / median_seconds(base)
            spread = [r.seconds for r in rs]
            speedup_min = min(spread) / min(r.seconds for r in base)
            m = match(base[0], rs[0])
            lines.append(
                f"| {loop} | {turns} | {tokens} | {secs:.2f} ({min(spread):.2f}-{max(spread):.2f}) | "
                f"{tokens / secs:.1f} | {speedup:.2f}x ({speedup_min:.2f}x) | "
                f"{m['turns']:.0%} ({m['episodes']:.0%} of episodes) |"
            )
            results["rows"].append(
                {
                    "loop": loop,
                    "turns": turns,
                    "sampled_tokens": tokens,
                    "median_s": secs,
                    "tokens_per_s": tokens / secs,
                    "runner_speedup": speedup,
                    "match": m,
                    "runner_speedup_on_min": speedup_min,
                    "seconds": spread,
                }
            )
    lines += ["", f"| loop | time at {t2} turns / time at {t} turns |", "|---|---|"]
    for loop in loops:
        if f"{loop}@{t2}" in runs:
            growth = median_seconds(runs[f"{loop}@{t2}"]) / median_seconds(runs[f"{loop}@{t}"])
            lines.append(f"| {loop} | {growth:.2f}x |")
            results[f"growth/{loop}"] = growth
    speedup = median_seconds(runs[f"naive@{t}"]) / median_seconds(runs[f"runner@{t}"])
    growth = results["growth/runner"]
    lines += [
        "",
        f"Targets: runner/naive tokens/s >= 3x at {t} turns: {speedup:.2f}x "
        f"({'holds' if speedup >= 3 else 'does NOT hold'}); runner time growth when turns double <= 2.3x: "
        f"{growth:.2f}x ({'holds' if growth <= 2.3 else 'does NOT hold'}).",
    ]
    return "\n".join(lines), results


def args_seeds(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(range(args.seed, args.seed + args.episodes))


# ---- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a model directory (default: build the default model in a temp dir)")
    p.add_argument("--size", default="tiny", choices=("tiny", "small"), help="default model size")
    p.add_argument("--episodes", type=int, default=8, help="graph_nav episodes, played as one batch")
    p.add_argument("--turns", type=int, default=16, help="turns per episode T; growth runs T and 2T")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per loop (median reported)")
    p.add_argument("--max-response-tokens", type=int, default=32, help="the most tokens of one turn")
    p.add_argument(
        "--env-size", default="medium", choices=("small", "medium", "large"), help="graph_nav preset"
    )
    p.add_argument("--seed", type=int, default=0, help="first episode seed (seeds seed..seed+episodes-1)")
    p.add_argument("--single", action="store_true", help="also time the naive loop one episode at a time")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write the config and results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else init_model(Path(tmp) / "model", size=args.size)
        model, tokenizer = load_model(model_dir)
    model.eval()
    chat = ChatFormat(tokenizer)
    info = {
        "model": args.model or f"default {args.size} (seed 0)",
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    seeds = args_seeds(args)

    def work(turns: int) -> Workload:
        return Workload(seeds, turns, args.max_response_tokens, args.env_size)

    # warm-up: first calls allocate and pick kernels
    runner_rollout(model, chat, work(2))
    naive_rollout(model, chat, work(2))
    loops: dict[str, Callable[[], Rollout]] = {}
    for turns in (args.turns, 2 * args.turns):
        w = work(turns)
        loops[f"runner@{turns}"] = partial(runner_rollout, model, chat, w)
        loops[f"naive@{turns}"] = partial(naive_rollout, model, chat, w)
    if args.single:
        loops[f"naive-1@{args.turns}"] = partial(naive_rollout, model, chat, work(args.turns), batched=False)
    runs = timed_repeats(loops, args.repeats)
    table, results = report(args, runs, info)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
