"""The training loop: rollout, advantages, update, log, checkpoint; readable top to bottom.

    agentrl train --config examples/ppo_arithmetic.yaml [--set key=value ...] [--iterations N] [--run-dir DIR]
    agentrl train --resume runs/ppo_arithmetic

One iteration (``run_iteration``):

1. **Rollout**: the runner plays ``rollout.tasks_per_iteration`` tasks, each ``rollout.group_size``
   times (a GRPO group shares a task and a ``group_id``), with the current policy; compaction happens
   inside the runner. The episodes are written to ``episodes/iter_<N>.jsonl`` with their advantages.
2. **Advantages**: ``Learner.prepare``: PPO's critic values and episode-level GAE, or GRPO's group
   normalised rewards (``agentrl/learner.py``; the math is in docs/algorithms.md).
3. **Update**: one ``match`` on the algorithm. PPO first runs ``ppo.value_pretrain_steps`` critic-only
   iterations (counted on top of ``run.iterations``), then critic passes and the policy update; GRPO
   updates the policy alone.
4. **Log** the metrics (``metrics.jsonl``, TensorBoard, a progress line; keys in docs/metrics.md) and
   **checkpoint** every ``run.checkpoint_every`` iterations and at the end.

The run ends after ``run.iterations`` (plus PPO's pre-training iterations) or, with a budget
``run.max_env_steps``, after the iteration whose rollout brings the run's environment steps
(``rollout/env_steps``: policy turns over all episodes so far) to the budget, whichever comes first;
it checkpoints at that last iteration.

Everything random is derived from ``run.seed`` and the iteration number (task seeds, sampling, the
learner's mini-batch order), and a checkpoint holds the weights, the optimiser states and every RNG
state, so a run stopped after iteration k and resumed gives the same iterations k+1.. as one that never
stopped (``perf/*`` timings aside). The run directory holds ``config.yaml`` (the resolved config),
``metrics.jsonl``, ``tensorboard/``, ``episodes/``, ``checkpoints/`` and, for a fresh default model,
``initial_model/`` (the reference policy of the KL term is always the initial model).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.backends import make_sampler
from agentrl.chat import ChatFormat
from agentrl.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_trainer_state,
    restore_rng,
    save_checkpoint,
)
from agentrl.config import TrainConfig, load_config, save_config
from agentrl.critic import (
    SharedValueHead,
    critic_from_policy,
    load_critic,
    load_shared_value_head,
    reference_from_policy,
)
from agentrl.diagnostics import credit_metrics
from agentrl.episodes import save_episodes
from agentrl.learner import Learner, batch_metrics
from agentrl.metrics import (
    PERF_WEIGHT_SYNC_S,
    ROLLOUT_ENV_STEPS,
    ROLLOUT_EPISODES,
    ROLLOUT_TURNS_MEAN,
    MetricsLogger,
    PhaseTimer,
    peak_memory_mb,
    read_metrics,
    rollout_metrics,
)
from agentrl.models import init_model, load_model
from agentrl.registry import make
from agentrl.runner import Runner, Task
from agentrl.weight_sync import push_weights

CONFIG_FILE = "config.yaml"
INITIAL_MODEL_DIR = "initial_model"
EPISODES_DIR = "episodes"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Trainer:
    """Everything one run holds between iterations."""

    cfg: TrainConfig
    run_dir: Path
    policy: Any
    tokenizer: Any
    critic: Any | None
    learner: Learner
    runner: Runner
    chat: ChatFormat
    logger: MetricsLogger
    iteration: int  # the last iteration finished
    env_steps: int = 0  # environment steps (policy turns) of every episode so far

    @property
    def total_iterations(self) -> int:
        return total_iterations(self.cfg)

    @property
    def budget_spent(self) -> bool:
        """Whether the run has taken its ``run.max_env_steps`` environment steps."""
        budget = self.cfg.run.max_env_steps
        return budget is not None and self.env_steps >= budget


def total_iterations(cfg: TrainConfig) -> int:
    """``run.iterations`` plus PPO's critic-only pre-training iterations."""
    return cfg.run.iterations + (cfg.ppo.value_pretrain_steps if cfg.algorithm == "ppo" else 0)


def _seed(cfg: TrainConfig, iteration: int, stream: int) -> int:
    """A seed for one purpose (``stream``) of one iteration, derived from ``run.seed`` alone."""
    return random.Random(f"{cfg.run.seed}:{iteration}:{stream}").randrange(2**31)


def device_for(name: str) -> torch.device:
    """The torch device of ``model.device`` (``auto``: cuda when there is one, else cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def tasks_for(cfg: TrainConfig, iteration: int) -> list[Task]:
    """The iteration's tasks: ``tasks_per_iteration`` environment seeds, each ``group_size`` times."""
    r = cfg.rollout
    first = cfg.run.seed * 1_000_000 + (iteration - 1) * r.tasks_per_iteration
    return [
        Task(seed=first + j, group_id=f"{iteration}:{j}", options=None)
        for j in range(r.tasks_per_iteration)
        for _ in range(r.group_size)
    ]


# ---- building a run ---------------------------------------------------------------------------------


def _initial_model_dir(cfg: TrainConfig, run_dir: Path) -> Path:
    """The model the run starts from: ``model.path``, or a fresh default model written into the run."""
    if cfg.model.path is not None:
        return Path(cfg.model.path)
    out = run_dir / INITIAL_MODEL_DIR
    if not (out / "config.json").is_file():
        init_model(out, size=cfg.model.init_size, seed=cfg.run.seed)
    return out


def load_policy(path: Path, cfg: TrainConfig, device: torch.device) -> tuple[Any, Any]:
    """The policy and tokenizer in ``path``, in ``model.dtype`` on ``device``, in eval mode."""
    policy, tokenizer = load_model(path, dtype=DTYPES[cfg.model.dtype])
    return policy.to(device).eval(), tokenizer  # eval: no dropout, so the first ratio is exactly 1


def _critic(cfg: TrainConfig, policy: Any, checkpoint: Path | None) -> Any | None:
    """PPO's critic: built from the policy, or read from a checkpoint; GRPO has none."""
    if not cfg.needs_critic:
        return None
    shared = cfg.model.critic == "shared"
    if checkpoint is None:
        if shared:
            return SharedValueHead(policy, seed=cfg.run.seed)
        return critic_from_policy(policy, seed=cfg.run.seed).eval()
    if shared:
        return load_shared_value_head(checkpoint / "critic", policy)
    device = next(policy.parameters()).device
    return load_critic(checkpoint / "critic", dtype=DTYPES[cfg.model.dtype]).to(device).eval()


def build(cfg: TrainConfig, *, resume: bool, progress: bool = True) -> Trainer:
    """A fresh run in ``cfg.run_dir``, or (``resume``) the run there from its latest checkpoint."""
    run_dir = cfg.run_dir
    device = device_for(cfg.model.device)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise ValueError(f"--resume: {run_dir} has no complete checkpoint to resume from")
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise ValueError(f"run_dir: {run_dir} already holds a run; resume it with --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_FILE)
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed % 2**32)
    torch.manual_seed(cfg.run.seed)

    initial = _initial_model_dir(cfg, run_dir)
    policy, tokenizer = load_policy(checkpoint / "policy" if checkpoint else initial, cfg, device)
    critic = _critic(cfg, policy, checkpoint)
    reference = None
    if cfg.needs_reference:  # the initial policy, frozen, whether or not the run resumes
        reference = reference_from_policy(load_policy(initial, cfg, device)[0])
    learner = Learner(cfg, policy, critic=critic, reference=reference, seed=cfg.run.seed,
                      pad_id=tokenizer.pad_token_id or 0)
    iteration = 0
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        learner.load_state_dict(state.extra["learner"])
        restore_rng(state.rng)
        iteration = state.iteration
    chat = ChatFormat(tokenizer)
    weights = checkpoint / "policy" if checkpoint else initial  # the policy's weights on disk, for an engine
    sampler = make_sampler(cfg.rollout, policy, weights, seed=cfg.run.seed)
    runner = Runner(sampler, chat, cfg.to_runner_config())
    logger = MetricsLogger(run_dir, total_iterations=total_iterations(cfg), progress=progress,
                           resume_from_iteration=iteration if resume else None)
    # the logger kept the records up to the checkpoint: they hold the environment steps so far
    env_steps = sum(env_steps_of(record) for record in read_metrics(run_dir)) if resume else 0
    return Trainer(cfg, run_dir, policy, tokenizer, critic, learner, runner, chat, logger, iteration,
                   env_steps)


# ---- one iteration ------------------------------------------------------------------------------------


def run_iteration(t: Trainer, iteration: int) -> dict[str, float]:
    """Rollout, advantages, update for one iteration; returns its metrics (not yet logged)."""
    cfg, timer = t.cfg, PhaseTimer()

    def make_env() -> Any:
        return make(cfg.env.name, **cfg.env.options)

    with timer.phase("rollout"):
        result = t.runner.run(make_env, tasks_for(cfg, iteration), seed=_seed(cfg, iteration, 0))
    episodes = result.episodes
    metrics = rollout_metrics(result.metrics, episodes)
    if not episodes:  # every task failed: nothing to learn from; the failures are in the metrics
        return metrics | timer.metrics()

    with timer.phase("advantages"):
        rows = t.learner.prepare(episodes)
        metrics |= batch_metrics(rows) | credit_metrics(rows, episodes) | t.learner.mismatch

    updates: list[dict[str, float]] = []
    match cfg.algorithm:
        case "ppo" if t.learner.pretrain_steps_done < cfg.ppo.value_pretrain_steps:
            with timer.phase("critic"):
                updates.append(t.learner.pretrain_critic(rows))
        case "ppo":
            with timer.phase("critic"):
                updates.append(t.learner.update_critic(rows))
            with timer.phase("policy"):
                updates.append(t.learner.update_policy(rows))
            metrics |= _sync(t)
        case "grpo":
            with timer.phase("policy"):
                updates.append(t.learner.update_policy(rows))
            metrics |= _sync(t)
    skipped = 0.0
    for update in updates:
        skipped += update.pop("skipped_updates", 0.0)
        metrics |= update
    metrics["skipped_updates"] = skipped

    save_episodes(t.run_dir / EPISODES_DIR / f"iter_{iteration:06d}.jsonl", episodes, decode=t.chat.decode,
                  token_fields=_token_fields(rows, episodes))
    memory = peak_memory_mb(next(t.policy.parameters()).device)
    return metrics | timer.metrics() | {"perf/peak_memory_mb": memory}


def _sync(t: Trainer) -> dict[str, float]:
    """Give the sampler the updated policy's weights (a vLLM engine keeps its own copy)."""
    seconds = push_weights(t.runner.sampler, t.policy)
    return {} if seconds is None else {PERF_WEIGHT_SYNC_S: seconds}


def _token_fields(rows: list[Any], episodes: list[Any]) -> dict[str, list[list[list[float]]]]:
    """The per-token fields written with the episodes: ``advantages`` always; ``values`` (the critic's
    values at sampling time) and ``returns`` for PPO; ``ref_logprobs`` when a reference is loaded. A
    field the rows do not carry is left out rather than written as zeros."""
    fields = {"advantages": _per_episode([row.advantages for row in rows], episodes)}
    written = (("values", "old_values"), ("returns", "returns"), ("ref_logprobs", "ref_logprobs"))
    for name, attribute in written:
        per_row = [getattr(row, attribute) for row in rows]
        if all(v is not None for v in per_row):
            fields[name] = _per_episode(per_row, episodes)
    return fields


def _per_episode(values: list[Any], episodes: list[Any]) -> list[list[list[float]]]:
    """Rows (episode order, then sub-trace order) regrouped per episode, as plain lists."""
    out, i = [], 0
    for e in episodes:
        n = len(e.sub_traces)
        out.append([[0.0] * e.sub_traces[k].num_tokens if v is None else v.tolist()
                    for k, v in enumerate(values[i : i + n])])
        i += n
    return out


def env_steps_of(metrics: dict[str, Any]) -> int:
    """One iteration's environment steps (policy turns over its episodes), from its rollout metrics."""
    return round((metrics.get(ROLLOUT_TURNS_MEAN) or 0.0) * (metrics.get(ROLLOUT_EPISODES) or 0.0))


def checkpoint(t: Trainer, iteration: int) -> Path:
    """Save the weights, the learner's optimisers and generator, and every RNG state, atomically."""
    return save_checkpoint(
        t.run_dir, iteration, policy=t.policy, tokenizer=t.tokenizer, critic=t.critic,
        optimizers={}, rng_state=capture_rng(), extra={"learner": t.learner.state_dict()},
    )


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) training to ``run.iterations``, or until ``run.max_env_steps`` environment steps
    are spent; returns the run directory."""
    t = build(cfg, resume=resume, progress=progress)
    try:
        for iteration in range(t.iteration + 1, t.total_iterations + 1):
            if t.budget_spent:  # a resumed run that had finished its budget
                break
            metrics = run_iteration(t, iteration)
            t.env_steps += env_steps_of(metrics)
            metrics[ROLLOUT_ENV_STEPS] = float(t.env_steps)
            last = iteration == t.total_iterations or t.budget_spent
            every = cfg.run.checkpoint_every
            if last or (every and iteration % every == 0):
                timer = PhaseTimer()
                with timer.phase("checkpoint"):
                    checkpoint(t, iteration)
                metrics |= timer.metrics()
            t.logger.log(iteration, metrics)
            t.iteration = iteration
    finally:
        t.logger.close()
    return t.run_dir


def config_for(config: str | None, overrides: list[str], *, iterations: int | None, run_dir: str | None,
               resume: str | None) -> TrainConfig:
    """The config of ``agentrl train``: the file (or, resuming, the run's own config.yaml), then the
    ``--set`` overrides, then ``--iterations`` and ``--run-dir``."""
    extra = list(overrides)
    if resume is not None:
        if config is not None:
            raise ValueError("--config: a resumed run uses its own config.yaml; change fields with --set")
        config = str(Path(resume) / CONFIG_FILE)
        extra.append(f"run.run_dir={resume}")
    elif config is None:
        raise ValueError("--config: required (or --resume RUN_DIR)")
    if iterations is not None:
        extra.append(f"run.iterations={iterations}")
    if run_dir is not None:
        if resume is not None:
            raise ValueError("--run-dir: a resumed run stays in its directory")
        extra.append(f"run.run_dir={run_dir}")
    return load_config(config, extra)
