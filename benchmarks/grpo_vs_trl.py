"""One GRPO step of agentrl against one of Hugging Face TRL's ``GRPOTrainer``, side by side on the CPU.

    pip install -e '.[bench]'          # TRL is a benchmark-only extra, never a core dependency
    python benchmarks/grpo_vs_trl.py [--steps 8] [--rounds 2] [--threads 1] [--profile]

The same work on both sides:
- the same model directory (the default tiny Qwen2 model, built once) and its tokenizer;
- single-turn ``arithmetic`` prompts (two operands up to 9): the same prompts, in the same order, rendered
  by the same chat template (the script checks TRL's prompt ids equal agentrl's);
- 4 prompts x 8 generations per step, at most 32 completion tokens, temperature 1;
- beta 0.04 with the k3 estimator to the frozen initial model, clip 0.2 / 0.28, token-mean loss;
- one optimiser update per step (one mini-batch, one epoch), AdamW at the same constant learning rate,
  gradient norm clipped to 1; no activation checkpointing (TRL's default turns it on);
- reward 1 when the reply's last integer is the result (``agentrl.envs.arithmetic.last_integer``).

A step is everything between two updates: sampling, reward, reference log-probs, advantages, loss,
backward, optimiser step. agentrl's is ``agentrl.train.run_iteration`` (which also writes the episodes
to JSONL, as a real run does); TRL's is ``Trainer.training_step`` plus the optimiser step, timed by a
callback from ``on_step_begin`` to ``on_step_end``. Both run in one process on ``--threads`` torch
threads, in alternating blocks of ``--steps`` steps, ``--rounds`` blocks each (the order flips every
round), after ``--warmup`` steps each.

Times are this thread's CPU time by default (``--clock cpu``, one torch thread: all the work of both
sides runs on the calling thread), so that another job on a shared machine, which takes cores away,
does not move them; ``--clock wall`` times wall-clock seconds. Reported: the median step time of each
side and their ratio agentrl/TRL (target <= 0.45), and the spread of the ratio pair by pair: round by
round (the median of a round's agentrl block over the median of the TRL block next to it) and step by
step (the k-th step of one side's block over the k-th of the other's, every round). ``--profile`` adds
the time of each phase of a step (medians).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from agentrl.envs.arithmetic import last_integer

import agentrl.metrics as agentrl_metrics
from agentrl.chat import ChatFormat
from agentrl.config import load_config
from agentrl.models import init_model, load_model
from agentrl.registry import make
from agentrl.train import build, run_iteration, tasks_for

PROMPTS, GENERATIONS, MAX_COMPLETION, BETA, LR = 4, 8, 32, 0.04, 1e-5
CLOCK = [time.thread_time]  # time.perf_counter with --clock wall
ENV_OPTIONS = {"num_operands": 2, "max_value": 9}


def agentrl_config(model_dir: Path, run_dir: Path, iterations: int) -> Any:
    """The GRPO run of the benchmark: the settings above, nothing else."""
    sets = {
        "run.iterations": iterations, "run.checkpoint_every": 0, "run.run_dir": str(run_dir),
        "model.path": str(model_dir), "env.name": "arithmetic",
        **{f"env.options.{k}": v for k, v in ENV_OPTIONS.items()},
        "rollout.tasks_per_iteration": PROMPTS, "rollout.group_size": GENERATIONS,
        "rollout.max_response_tokens": MAX_COMPLETION, "rollout.temperature": 1.0,
        "rollout.context_budget": 256, "rollout.max_turns": 1, "rollout.max_compactions": 0,
        "rollout.max_concurrent": PROMPTS * GENERATIONS, "rollout.compaction.strategy": "none",
        "algorithm": "grpo", "grpo.epochs": 1, "grpo.minibatches": 1, "grpo.kl_beta": BETA,
        "grpo.kl_kind": "k3", "grpo.clip_low": 0.2, "grpo.clip_high": 0.28, "grpo.aggregation": "token-mean",
        "optim.actor_lr": LR, "optim.grad_clip": 1.0, "optim.micro_batch_tokens": 8192,
    }
    root = Path(__file__).resolve().parent.parent
    return load_config(str(root / "examples" / "grpo_arithmetic.yaml"), [f"{k}={v}" for k, v in sets.items()])


class AgentrlSide:
    """agentrl's trainer on ``cfg``; ``step()`` runs one iteration and returns its seconds (and phase
    seconds)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.trainer = build(self.cfg, resume=False, progress=False)
        self.iteration = 0
        self.completion_tokens: list[float] = []  # policy tokens per episode, by step
        self.turns: list[float] = []  # actions per episode, by step

    def step(self) -> tuple[float, dict[str, float]]:
        self.iteration += 1
        start = CLOCK[0]()
        metrics = run_iteration(self.trainer, self.iteration)
        seconds = CLOCK[0]() - start
        self.completion_tokens.append(metrics["rollout/policy_tokens"] / metrics["rollout/episodes"])
        self.turns.append(metrics["rollout/turns_mean"])
        prefix = "perf/seconds_"
        phases = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        return seconds, phases


def arithmetic_prompts(side: AgentrlSide, iterations: int) -> list[tuple[str, int]]:
    """(rendered prompt, expected result) of each task, in the order agentrl plays them."""
    chat, out = side.trainer.chat, []
    for it in range(1, iterations + 1):
        for task in tasks_for(side.cfg, it)[::GENERATIONS]:
            env = make("arithmetic", **ENV_OPTIONS)
            text, _ = env.reset(seed=task.seed)
            ids = chat.prompt_ids(env.system_prompt, [], text)
            out.append((chat.decode(ids), int(env.expert_action())))
    return out


def arithmetic_reward(prompts: list[str], completions: list[str], answer: list[int], **_: Any) -> list[float]:
    """TRL's reward function: 1 when the reply's last integer is the result."""
    return [float(last_integer(c) == a) for c, a in zip(completions, answer, strict=True)]


class TRLSide:
    """TRL's GRPOTrainer on the same prompts (dataset ``rows``); ``steps(n)`` runs n optimiser steps and
    returns their times. ``settings`` override the GRPOConfig below; ``trainer_kwargs`` go to
    ``GRPOTrainer`` (``environment_factory``, for instance); ``tokenizer`` replaces the model's own."""

    def __init__(self, model_dir: Path, work: Path, rows: list[dict[str, Any]], reward: Any | None, *,
                 settings: dict[str, Any] | None = None, tokenizer: Any | None = None,
                 **trainer_kwargs: Any) -> None:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
        self.dataset = Dataset.from_list(rows)
        self.step_seconds: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.completion_tokens: list[float] = []
        side = self

        class Timer(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                side._current = {}
                side._start = CLOCK[0]()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                seconds = CLOCK[0]() - side._start
                side.step_seconds.append(seconds)
                phases = dict(side._current)  # "generate" runs inside "generate+score+reference"
                phases["score+reference"] = phases.pop("generate+score+reference") - phases["generate"]
                known = sum(phases.values())
                side.phases.append(phases | {"backward+optimiser": seconds - known})

        self.args = GRPOConfig(**{**dict(
            output_dir=str(work / "trl_run"), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
            logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False,
            per_device_train_batch_size=PROMPTS * GENERATIONS, num_generations=GENERATIONS,
            gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
            max_completion_length=MAX_COMPLETION, temperature=1.0, top_p=1.0, top_k=0,
            beta=BETA, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
            learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=1.0,
            # TRL's GRPOConfig turns activation checkpointing on by default (a memory saving that redoes
            # every layer's forward in the backward); agentrl does not checkpoint, so the same work is off
            gradient_checkpointing=False,
            seed=0, max_steps=1,
        ), **(settings or {})})
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.trainer = GRPOTrainer(model=model, reward_funcs=reward, args=self.args,
                                   train_dataset=self.dataset, processing_class=self.tokenizer,
                                   callbacks=[Timer()], **trainer_kwargs)
        self._instrument()

    def _instrument(self) -> None:
        """Time TRL's phases by wrapping its methods on this trainer instance (benchmark only)."""
        t = self.trainer

        def timed(name: str, fn: Any) -> Any:
            def wrapper(*a: Any, **k: Any) -> Any:
                start = CLOCK[0]()
                try:
                    return fn(*a, **k)
                finally:
                    self._current[name] = self._current.get(name, 0.0) + CLOCK[0]() - start
            return wrapper

        generate, score = t._generate, t._generate_and_score_completions

        def score_and_count(*a: Any, **k: Any) -> Any:
            out = score(*a, **k)
            mask = out["completion_mask"]
            if out.get("tool_mask") is not None:  # multi-turn: tool results are in the completion, masked
                mask = mask * out["tool_mask"]
            self.completion_tokens.append(float(mask.sum()) / mask.shape[0])
            return out

        t._generate = timed("generate", generate)
        t._generate_and_score_completions = timed("generate+score+reference", score_and_count)
        t.compute_loss = timed("loss forward", t.compute_loss)

    def steps(self, n: int) -> list[float]:
        """Run ``n`` more optimiser steps; TRL's train() restarts its loop, the weights carry on."""
        before = len(self.step_seconds)
        self.trainer.args.max_steps = n
        self.trainer.train()
        return self.step_seconds[before:]


def phase_table(name: str, phases: Sequence[dict[str, float]]) -> list[str]:
    keys = list(dict.fromkeys(k for p in phases for k in p))
    lines = [f"{name} phases (median seconds per step):"]
    for k in keys:
        lines.append(f"  {k:<28} {statistics.median(p.get(k, 0.0) for p in phases):8.4f}")
    return lines


def spread(ours: Sequence[Sequence[float]], theirs: Sequence[Sequence[float]]) -> list[str]:
    """The ratio agentrl/TRL pair by pair: per round (block medians) and per step (k-th against k-th)."""
    rounds = [statistics.median(a) / statistics.median(b) for a, b in zip(ours, theirs, strict=True)]
    steps = sorted(x / y for a, b in zip(ours, theirs, strict=True) for x, y in zip(a, b, strict=True))
    q = statistics.quantiles(steps, n=4) if len(steps) > 1 else [steps[0]] * 3
    return [
        "ratio by round (block medians): " + ", ".join(f"{r:.2f}" for r in rounds)
        + f"; median {statistics.median(rounds):.2f}, range {min(rounds):.2f}-{max(rounds):.2f}",
        f"ratio step by step ({len(steps)} pairs): median {statistics.median(steps):.2f}, "
        f"quartiles {q[0]:.2f}-{q[2]:.2f}, range {steps[0]:.2f}-{steps[-1]:.2f}",
    ]


def parser(description: str) -> argparse.ArgumentParser:
    """The options both TRL comparisons take."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=4, help="timed steps per block")
    p.add_argument("--rounds", type=int, default=6,
                   help="blocks per side, alternating (the order flips each round)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="this thread's CPU time (default; needs --threads 1) or wall time")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each side first")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--profile", action="store_true", help="print each side's phases")
    return p


def set_clock(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Time on ``--clock`` (agentrl's phase timer too) with ``--threads`` torch threads."""
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu: measures the calling thread only, so it needs --threads 1")
    CLOCK[0] = time.thread_time if args.clock == "cpu" else time.perf_counter
    # agentrl's phase profile comes from its PhaseTimer (wall time): read on the same clock as the rest
    agentrl_metrics.time = SimpleNamespace(**vars(time) | {"perf_counter": CLOCK[0]})
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import transformers

    transformers.logging.set_verbosity_error()


def alternate(ours: AgentrlSide, theirs: TRLSide, args: argparse.Namespace
              ) -> tuple[list[list[float]], list[list[float]], list[dict[str, float]], int]:
    """Warm-up steps of each side, then ``--rounds`` blocks of ``--steps`` steps each, alternating (the
    order flips every round). Returns agentrl's blocks, TRL's blocks, agentrl's phases, and the number
    of TRL's warm-up steps (its phases after them are the timed ones)."""
    for _ in range(args.warmup):
        ours.step()
    theirs.steps(args.warmup)
    warm_trl = len(theirs.step_seconds)
    ours_blocks: list[list[float]] = []
    trl_blocks: list[list[float]] = []
    ours_phases = []
    for r in range(args.rounds):
        order = ("agentrl", "trl") if r % 2 == 0 else ("trl", "agentrl")
        for side in order:
            if side == "agentrl":
                ours_blocks.append([])
                for _ in range(args.steps):
                    s, ph = ours.step()
                    ours_blocks[-1].append(s)
                    ours_phases.append(ph)
            else:
                trl_blocks.append(theirs.steps(args.steps))
    return ours_blocks, trl_blocks, ours_phases, warm_trl


def report(title: str, ours: AgentrlSide, theirs: TRLSide, measured: Any, args: argparse.Namespace, *,
           turns: Sequence[float] | None = None) -> None:
    """Print the step times of both sides, the phases (``--profile``), the spread and the ratio;
    ``turns``: TRL's actions per episode, by step (multi-turn), printed beside agentrl's."""
    import transformers
    import trl

    ours_blocks, trl_blocks, ours_phases, warm_trl = measured
    ours_times = [t for block in ours_blocks for t in block]
    trl_times = [t for block in trl_blocks for t in block]
    a, b = statistics.median(ours_times), statistics.median(trl_times)
    print(f"{title}, CPU, {args.threads} thread(s), {args.clock} time; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}")
    extra = f"{'actions/episode':>17}" if turns is not None else ""
    print(f"{'side':<10}{'steps':>7}{'median s/step':>15}{'min':>9}{'max':>9}{'completion tokens':>19}"
          + extra)
    for name, times, tokens, side_turns in (("agentrl", ours_times, ours.completion_tokens, ours.turns),
                                            ("TRL", trl_times, theirs.completion_tokens, turns)):
        cells = f"{statistics.mean(side_turns):>17.2f}" if turns is not None and side_turns else ""
        print(f"{name:<10}{len(times):>7}{statistics.median(times):>15.4f}{min(times):>9.4f}{max(times):>9.4f}"
              f"{statistics.mean(tokens):>19.1f}{cells}")
    if args.profile:
        print("\n".join(phase_table("agentrl", ours_phases)))
        print("\n".join(phase_table("TRL", theirs.phases[warm_trl:])))
    print("\n".join(spread(ours_blocks, trl_blocks)))
    print(f"ratio agentrl/TRL: {a / b:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    set_clock(p, args)
    total = args.warmup + args.steps * args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = init_model(work / "model", size="tiny", seed=0)
        ours = AgentrlSide(agentrl_config(model_dir, work / "agentrl_run", total))
        prompts = arithmetic_prompts(ours, total + 1)
        theirs = TRLSide(model_dir, work, [{"prompt": p, "answer": a} for p, a in prompts], arithmetic_reward)
        # the same prompt ids on both sides
        chat = ChatFormat(load_model(model_dir)[1])
        for text, _ in prompts[:PROMPTS]:
            got = theirs.tokenizer(text=text, add_special_tokens=False)["input_ids"]
            if got != chat.encode(text):
                raise SystemExit("TRL's prompt ids differ from agentrl's; the comparison would not be fair")
        measured = alternate(ours, theirs, args)
    title = (f"GRPO step, {PROMPTS} prompts x {GENERATIONS} generations, <= {MAX_COMPLETION} completion "
             "tokens, tiny model")
    report(title, ours, theirs, measured, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
