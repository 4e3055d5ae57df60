"""The decode step of ``TorchSampler``: the lean Qwen2 step against transformers' forward, side by side.

    python benchmarks/decode_step.py                    # tiny and small default models
    python benchmarks/decode_step.py --sizes tiny --repeats 3 --steps 16

For each default model size and each batch size B, both paths sample the same greedy turns from the
same random prompts: ``TorchSampler(model, lean_decode=True)`` (``agentrl.decode_step``) and
``TorchSampler(model, lean_decode=False)`` (the model's own forward, the path of before). A decode step's
cost is measured without the prefill: ``(time of a turn of 1 + steps tokens - time of a 1-token turn) /
steps`` (a 1-token turn is the prefill and one sampling, no decode forward), in the thread's CPU time
(``--clock wall`` for wall time). The paths alternate within every repeat, the order flipping each
repeat.

What is reported, per size: the median seconds per decode step of each path at each B and the ratio
lean/transformers pair by pair (each repeat's two measurements; the median and the range); the *fixed*
cost per step, the intercept ``a`` of a least-squares line ``step(B) = a + b * B`` through each path's
medians, and the ratio of the intercepts (target <= 0.5: the fixed cost halved); and whether both paths
sampled the same tokens (they must: the lean step does the same arithmetic).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from agentrl.models import init_model, load_model
from agentrl.rollout import SamplingParams, TorchSampler

PATHS = ("lean", "transformers")
# Seconds of this thread's CPU time by default: with one torch thread all the work runs on the calling
# thread, and on a machine shared with other jobs CPU time leaves out the time spent waiting for a core,
# which wall time does not (``--clock wall`` measures wall time instead).
CLOCK = [time.thread_time]


def turn_seconds(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], new_tokens: int, *, lean: bool
) -> tuple[float, list[tuple[int, ...]]]:
    """Seconds of one greedy turn of ``new_tokens`` for every prompt (no stop token), and its tokens."""
    sampler = TorchSampler(model, lean_decode=lean)
    sessions = [sampler.open(p) for p in prompts]
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    start = CLOCK[0]()
    gens = sampler.generate(sessions, params)
    seconds = CLOCK[0]() - start
    expected = "lean" if lean else "transformers"
    if sampler.decode_path != expected and new_tokens > 1:
        raise RuntimeError(f"the sampler took the {sampler.decode_path} path, not {expected}")
    return seconds, [g.token_ids for g in gens]


def step_seconds(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], steps: int, *, lean: bool
) -> tuple[float, list[tuple[int, ...]]]:
    """Seconds per decode step (the prefill subtracted) and the tokens of the long turn."""
    short, _ = turn_seconds(model, prompts, 1, lean=lean)
    long, tokens = turn_seconds(model, prompts, 1 + steps, lean=lean)
    return max(long - short, 0.0) / steps, tokens


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def measure(model: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Every (batch size, path, repeat) measurement, alternating the paths; and the token check."""
    vocab = int(model.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(0)
    times: dict[tuple[int, str], list[float]] = {(b, p): [] for b in args.batch for p in PATHS}
    same = True
    for b in args.batch:  # warm-up of both paths at every shape
        prompts = torch.randint(0, vocab, (b, args.prompt), generator=g).tolist()
        for p in PATHS:
            step_seconds(model, prompts, 2, lean=p == "lean")
    for r in range(args.repeats):
        for b in args.batch:
            prompts = torch.randint(0, vocab, (b, args.prompt), generator=g).tolist()
            tokens = {}
            for p in PATHS if r % 2 == 0 else reversed(PATHS):
                seconds, tokens[p] = step_seconds(model, prompts, args.steps, lean=p == "lean")
                times[(b, p)].append(seconds)
            same &= tokens["lean"] == tokens["transformers"]
    return {"times": times, "same_tokens": same}


def report(size: str, args: argparse.Namespace, result: dict) -> list[str]:
    """The table of one model size, the intercepts and their ratio."""
    times = result["times"]
    lines = [
        f"\n## {size} model: {args.steps} decode steps after a {args.prompt}-token prompt, greedy, "
        f"{args.repeats} repeats",
        "",
        "| batch | lean ms/step | transformers ms/step | ratio, median of pairs | ratio range |",
        "|---|---|---|---|---|",
    ]
    medians: dict[str, list[float]] = {p: [] for p in PATHS}
    for b in args.batch:
        lean, hf = times[(b, "lean")], times[(b, "transformers")]
        ratios = [x / y for x, y in zip(lean, hf, strict=True) if y > 0]
        for p, v in (("lean", lean), ("transformers", hf)):
            medians[p].append(statistics.median(v))
        lines.append(
            f"| {b} | {1e3 * medians['lean'][-1]:.3f} | {1e3 * medians['transformers'][-1]:.3f} | "
            f"{statistics.median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} |"
        )
    fits = {p: line_fit(args.batch, medians[p]) for p in PATHS}
    lines += [
        "",
        f"fixed cost per step (intercept of step = a + b * batch): lean {1e3 * fits['lean'][0]:.3f} ms, "
        f"transformers {1e3 * fits['transformers'][0]:.3f} ms; per row: lean {1e3 * fits['lean'][1]:.4f} ms, "
        f"transformers {1e3 * fits['transformers'][1]:.4f} ms",
        f"fixed-cost ratio lean/transformers ({size}): {fits['lean'][0] / fits['transformers'][0]:.2f}",
        f"same tokens on both paths ({size}): {'yes' if result['same_tokens'] else 'NO'}",
    ]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=48, help="decode steps measured per turn")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="this thread's CPU time (default; needs --threads 1) or wall time")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu: measures the calling thread only, so it needs --threads 1")
    if len(set(args.batch)) < 2:
        parser.error("--batch: give at least two batch sizes (the fixed cost is a line's intercept)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    CLOCK[0] = time.thread_time if args.clock == "cpu" else time.perf_counter
    print(f"clock: {args.clock} time, {args.threads} torch thread(s)")
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            model, _ = load_model(init_model(Path(tmp) / size, size=size))
            model.eval()
            lines += report(size, args, measure(model, args))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
