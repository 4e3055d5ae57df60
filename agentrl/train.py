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
``metrics.jsonl``, ``tensorboard/``, ``episodes/``, ``failures/`` (the tasks that gave no episode, and
why: ``agentrl.failures``), ``checkpoints/`` and, for a fresh default model,
``initial_model/`` (the reference policy of the KL term is always the initial model).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl import api
from agentrl.backends import make_sampler
from agentrl.batching import RolloutRunner, make_runner
from agentrl.chat import ChatFormat
from agentrl.checkpoint import (
    TrainerState,
    best_checkpoint,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    prune_checkpoints,
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
from agentrl.data_parallel import SINGLE, DataParallel, init_from_env, launch, needs_launch
from agentrl.diagnostics import credit_metrics
from agentrl.episodes import save_episodes
from agentrl.failures import FAILURES_DIR, check_not_empty, save_failures
from agentrl.fsdp import FullCopies, shard_model
from agentrl.guards import DivergenceError, check_advantages, check_models, largest_weight
from agentrl.learner import Learner, batch_metrics
from agentrl.metrics import (
    ALL_KEYS,
    PERF_DECODE_PATH,
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
from agentrl.outputs import check_writable_dir
from agentrl.rollout import TorchSampler
from agentrl.rollout_shards import Rollout
from agentrl.runner import Runner, Task
from agentrl.scale_out import make_rollout, play, push

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
    runner: RolloutRunner  # static rounds or continuous batching (rollout.batching)
    chat: ChatFormat
    logger: MetricsLogger
    iteration: int  # the last iteration finished
    env_steps: int = 0  # environment steps (policy turns) of every episode so far
    initial_largest_weight: float = 1.0  # the divergence guard's scale (agentrl.guards)
    empty_iterations: int = 0  # iterations in a row in which every task failed (agentrl.failures)
    rollout: Rollout | None = None  # rank 0's (agentrl.scale_out); None on the other learner ranks
    parallel: DataParallel = SINGLE  # this process's learner rank
    full: FullCopies | None = None  # with FSDP2, rank 0's whole copies of the sharded models

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
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"model.device: {name!r}, but this machine has {count} CUDA devices; "
                             "use cpu or auto")
    return device


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
        # written aside and renamed, so a kill mid-write never leaves a half model that looks whole
        tmp = run_dir / f"{INITIAL_MODEL_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        init_model(tmp, size=cfg.model.init_size, seed=cfg.run.seed)
        os.replace(tmp, out)
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
    """A fresh run in ``cfg.run_dir``, or (``resume``) the run there from its latest readable checkpoint.

    Resuming a run that was stopped before its first checkpoint starts it again from nothing (a line
    says so); a fresh start refuses a directory that holds a checkpoint or logged metrics."""
    run_dir = cfg.run_dir
    check_writable_dir(run_dir, "run.run_dir")
    if cfg.run.keep_best is not None and cfg.run.keep_best not in ALL_KEYS:
        raise ValueError(f"run.keep_best: {cfg.run.keep_best!r} is no logged metric (docs/metrics.md lists "
                         "them, e.g. rollout/success_rate)")
    device = device_for(cfg.model.device)
    if not resume and _holds_run(run_dir):
        raise ValueError(f"run_dir: {run_dir} already holds a run; resume it with --resume {run_dir}")
    if resume and not list_checkpoints(run_dir):
        print(f"agentrl train: {run_dir} has no complete checkpoint yet; starting it from iteration 0",
              file=sys.stderr)
    d = cfg.distributed
    parallel = init_from_env(d.backend, d.learner_ranks, d.learner_sharding)
    run_dir.mkdir(parents=True, exist_ok=True)
    if parallel.is_main:
        save_config(cfg, run_dir / CONFIG_FILE)
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed % 2**32)
    torch.manual_seed(cfg.run.seed)

    if not parallel.is_main:  # rank 0 writes a fresh initial model; the others read it
        parallel.barrier()
    initial = _initial_model_dir(cfg, run_dir)
    if parallel.is_main:
        parallel.barrier()
    point = _resume_point(cfg, run_dir, device) if resume else None
    weights = initial  # the policy's weights on disk, for a rollout engine that loads its own
    if point is None:
        policy, tokenizer = load_policy(initial, cfg, device)
        critic, state = _critic(cfg, policy, None), None
    else:
        policy, tokenizer, critic, state, resumed = point
        weights = resumed / "policy"
    reference = None
    if cfg.needs_reference:  # the initial policy, frozen, whether or not the run resumes
        reference = reference_from_policy(load_policy(initial, cfg, device)[0])
    full = None
    if parallel.fsdp:  # rank 0 keeps whole copies (to sample from, send and checkpoint), then all cut
        full = FullCopies(parallel, policy, critic, device=device if d.rollout_workers == 0 else "cpu")
        for model in (policy, critic, reference):
            if model is not None:
                shard_model(model)
    whole = full.policy if full is not None else policy  # what the rollout samples with
    learner = Learner(cfg, policy, critic=critic, reference=reference, seed=cfg.run.seed,
                      pad_id=tokenizer.pad_token_id or 0, parallel=parallel)
    iteration, extra = 0, {}
    if state is not None:
        learner.load_state_dict(state.extra["learner"])
        restore_rng(state.rng)
        iteration, extra = state.iteration, state.extra
    chat = ChatFormat(tokenizer)
    local = parallel.is_main and cfg.distributed.rollout_workers == 0  # else the sampler is never used
    sampler = (make_sampler(cfg.rollout.backend, whole, weights, vllm=cfg.rollout.vllm, seed=cfg.run.seed)
               if local else TorchSampler(policy))
    runner = (make_runner(cfg, sampler, policy, chat) if local  # rollout.batching: static or continuous
              else Runner(sampler, chat, cfg.to_runner_config()))
    if parallel.is_main:
        logger = MetricsLogger(run_dir, total_iterations=total_iterations(cfg), progress=progress,
                               resume_from_iteration=iteration if resume else None, label=cfg.run.name,
                               max_env_steps=cfg.run.max_env_steps)
        env_steps = _restore_records(logger, iteration, extra) if resume else 0
        logger.start_env_steps = env_steps
    else:  # rank 0 alone writes the run directory
        logger = _Unlogged(run_dir)
        env_steps = int(extra.get("env_steps", 0))
    largest = extra.get("initial_largest_weight", largest_weight(policy))
    rollout = make_rollout(cfg, runner, weights, whole, parallel)
    return Trainer(cfg, run_dir, policy, tokenizer, critic, learner, runner, chat, logger, iteration,
                   env_steps, largest, rollout=rollout, parallel=parallel, full=full)


class _Unlogged(MetricsLogger):
    """A learner rank other than 0: logs nothing, writes nothing."""

    def __init__(self, run_dir: Path) -> None:  # no file opened, unlike the logger it stands for
        self.run_dir = run_dir

    def log(self, iteration: int, metrics: Any, *, note: str | None = None) -> dict[str, float]:
        return {key: float(value) for key, value in metrics.items()}

    def close(self) -> None:
        pass


def _holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` has a complete checkpoint or logged metrics (an empty metrics file, left by
    a run killed before its first iteration ended, is no run)."""
    metrics = run_dir / "metrics.jsonl"
    return bool(list_checkpoints(run_dir)) or (metrics.is_file() and metrics.stat().st_size > 0)


def _resume_point(cfg: TrainConfig, run_dir: Path, device: torch.device
                  ) -> tuple[Any, Any, Any | None, TrainerState, Path] | None:
    """The policy, tokenizer, critic, trainer state and directory of the newest checkpoint that loads;
    one that does not (truncated weights or state) is skipped with a line saying so. None: none."""
    found = list_checkpoints(run_dir)[::-1]
    latest = latest_checkpoint(run_dir)
    candidates = ([latest] if latest is not None else []) + [p for p in found if p != latest]
    for path in candidates:
        try:
            state = load_trainer_state(path)
            policy, tokenizer = load_policy(path / "policy", cfg, device)
            critic = _critic(cfg, policy, path)
        except Exception as err:  # noqa: BLE001 - whatever is wrong with it, it is not a resume point
            lines = str(err).strip().splitlines()
            reason = lines[0] if lines else type(err).__name__
            print(f"agentrl train: checkpoint {path.name} is unreadable ({reason}); trying the previous one",
                  file=sys.stderr)
            continue
        if path != candidates[0]:
            print(f"agentrl train: resuming from {path.name}", file=sys.stderr)
        return policy, tokenizer, critic, state, path
    if candidates:
        raise ValueError(f"--resume: no checkpoint of {run_dir} is readable")
    return None


def _restore_records(logger: MetricsLogger, iteration: int, extra: dict[str, Any]) -> int:
    """After a resume from ``iteration``: log its record again if a kill between the checkpoint and the
    log lost it (the checkpoint carries it); return the run's environment steps so far."""
    records = read_metrics(logger.run_dir)
    saved = extra.get("metrics")
    if saved is not None and iteration > 0 and not any(r["iteration"] == iteration for r in records):
        logger.log(iteration, saved)
        records = read_metrics(logger.run_dir)
    if "env_steps" in extra:
        return int(extra["env_steps"])
    # a checkpoint written before they carried the count: the records hold the environment steps
    return sum(env_steps_of(record) for record in records)


# ---- one iteration ------------------------------------------------------------------------------------


def run_iteration(t: Trainer, iteration: int) -> dict[str, float]:
    """Rollout, advantages, update for one iteration; returns its metrics (not yet logged)."""
    cfg, timer = t.cfg, PhaseTimer()

    upcoming = None  # with distributed.overlap, the next iteration plays while this one updates
    if iteration < t.total_iterations:
        upcoming = (tasks_for(cfg, iteration + 1), _seed(cfg, iteration + 1, 0))
    with timer.phase("rollout"):
        result = play(t.rollout, t.parallel, tasks_for(cfg, iteration), seed=_seed(cfg, iteration, 0),
                      upcoming=upcoming)
    episodes = result.episodes
    metrics = rollout_metrics(result.metrics, episodes)
    if (path := getattr(t.runner.sampler, "decode_path", None)) is not None:  # the torch backend's
        metrics[PERF_DECODE_PATH] = float(path == "lean")
    failures_file = t.run_dir / FAILURES_DIR / f"iter_{iteration:06d}.jsonl"
    if result.failures and t.parallel.is_main:
        save_failures(failures_file, result.failures)
    t.empty_iterations = 0 if episodes else t.empty_iterations + 1
    check_not_empty(t.empty_iterations, cfg.rollout.max_empty_iterations, result.failures, failures_file)
    if not episodes:  # every task failed: nothing to learn from; the reasons are in failures/
        return metrics | timer.metrics()

    with timer.phase("advantages"):
        rows = t.learner.prepare(episodes)
        metrics |= batch_metrics(rows) | credit_metrics(rows, episodes) | t.learner.mismatch
    try:
        check_advantages(row.advantages for row in rows)
    except DivergenceError as err:
        raise DivergenceError(f"iteration {iteration}: {err}; not updated, not checkpointed") from None

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

    if t.parallel.is_main:
        save_episodes(t.run_dir / EPISODES_DIR / f"iter_{iteration:06d}.jsonl", episodes,
                      decode=t.chat.decode, token_fields=_token_fields(rows, episodes))
    memory = peak_memory_mb(next(t.policy.parameters()).device)
    return metrics | timer.metrics() | {"perf/peak_memory_mb": memory}


def _sync(t: Trainer) -> dict[str, float]:
    """Give the rollout the updated policy's weights (a vLLM engine or a Ray worker keeps its own copy;
    with FSDP2 the shards are first gathered into rank 0's whole copy, which the rollout reads)."""
    if t.full is not None:
        t.full.refresh_policy(t.policy)
    seconds = push(t.rollout, t.full.policy if t.full is not None else t.policy)
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


def checkpoint(t: Trainer, iteration: int, record: dict[str, float] | None = None) -> Path | None:
    """Save the weights, the learner's optimisers and generator, every RNG state, the environment steps
    so far and the iteration's metrics ``record`` (logged after the save; a resume logs it again if the
    run died in between), atomically. Every rank calls it and rank 0 writes (None elsewhere): with
    FSDP2 the shards are gathered first, so the checkpoint is that of whole models on one rank."""
    policy, critic = t.policy, t.critic
    if t.full is not None:
        t.full.refresh([(t.policy, t.full.policy), (t.critic, t.full.critic)])
        policy, critic = t.full.policy, t.full.critic
    learner = t.learner.state_dict()  # with FSDP2 a collective too
    if not t.parallel.is_main:
        return None
    extra = {"learner": learner, "env_steps": t.env_steps,
             "initial_largest_weight": t.initial_largest_weight,
             "metrics": {k: float(v) for k, v in (record or {}).items()}}
    return save_checkpoint(
        t.run_dir, iteration, policy=policy, tokenizer=t.tokenizer, critic=critic,
        optimizers={}, rng_state=capture_rng(), extra=extra,
    )


def retain_checkpoints(run_dir: Path, cfg: TrainConfig) -> list[Path]:
    """Remove the checkpoints ``run.keep_checkpoints`` and ``run.keep_best`` do not keep (the newest k,
    and the best by the named metric over the logged records); returns the removed ones."""
    keep = cfg.run.keep_checkpoints
    if keep is None:
        return []
    best = None
    if cfg.run.keep_best is not None:
        best = best_checkpoint(run_dir, read_metrics(run_dir), cfg.run.keep_best, mode=cfg.run.best_mode)
    return prune_checkpoints(run_dir, keep_last=keep, also_keep=[best] if best is not None else [])


def check_divergence(t: Trainer, iteration: int) -> None:
    """Raise ``DivergenceError`` when the iteration's update left a model diverged (agentrl.guards);
    the message names the parameter, says nothing was checkpointed, and what to change."""
    models = [("policy", t.policy)] + ([("critic", t.critic)] if t.critic is not None else [])
    try:
        check_models(models, initial_largest=t.initial_largest_weight)
    except DivergenceError as err:
        last = latest_checkpoint(t.run_dir)
        kept = f"resume starts from {last.name}" if last else "no checkpoint yet"
        raise DivergenceError(
            f"iteration {iteration}: {err}; not checkpointed ({kept}); lower optim.actor_lr or critic_lr"
        ) from None


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) training to ``run.iterations``, or until ``run.max_env_steps`` environment steps
    are spent; returns the run directory. With ``distributed.learner_ranks`` above 1 and no ranks
    started by ``torchrun``, it starts them here (``agentrl.data_parallel.launch``)."""
    if needs_launch(cfg.distributed.learner_ranks):
        if not resume and _holds_run(cfg.run_dir):  # said here, before any rank starts
            raise ValueError(f"run_dir: {cfg.run_dir} already holds a run; "
                             f"resume it with --resume {cfg.run_dir}")
        launch(cfg.distributed.learner_ranks, train, cfg, resume=resume, progress=progress)
        return cfg.run_dir
    t = build(cfg, resume=resume, progress=progress)
    if progress:
        print(plan_line(cfg), file=sys.stderr, flush=True)
    try:
        for iteration in range(t.iteration + 1, t.total_iterations + 1):
            if t.budget_spent:  # a resumed run that had finished its budget
                break
            pretraining = (cfg.algorithm == "ppo"
                           and t.learner.pretrain_steps_done < cfg.ppo.value_pretrain_steps)
            metrics = run_iteration(t, iteration)
            t.env_steps += env_steps_of(metrics)
            metrics[ROLLOUT_ENV_STEPS] = float(t.env_steps)
            try:
                check_divergence(t, iteration)
            except DivergenceError:
                t.logger.log(iteration, metrics)  # what the diverged iteration saw, for the diagnosis
                raise
            last = iteration == t.total_iterations or t.budget_spent
            every = cfg.run.checkpoint_every
            due = last or bool(every and iteration % every == 0)
            saved = due and t.parallel.is_main
            if due:  # every rank: with FSDP2 the shards are gathered for rank 0 to write
                timer = PhaseTimer()
                with timer.phase("checkpoint"):
                    checkpoint(t, iteration, metrics)
                metrics |= timer.metrics()
            t.logger.log(iteration, metrics, note="critic pre-training" if pretraining else None)
            t.iteration = iteration
            if saved:
                retain_checkpoints(t.run_dir, cfg)
    except KeyboardInterrupt:  # Ctrl-C (an environment's own is caught by the runner): say what is lost
        print(interrupted(t), file=sys.stderr)
        raise
    finally:
        t.logger.close()
        if t.rollout is not None:
            t.rollout.close()
    return t.run_dir


def plan_line(cfg: TrainConfig) -> str:
    """What the run will do, in one line: its iterations (PPO's critic-only ones counted apart), the
    budget that may stop it first, and where it writes."""
    pretrain = cfg.ppo.value_pretrain_steps if cfg.algorithm == "ppo" else 0
    parts = [f"{cfg.run.name}: {cfg.algorithm.upper()},"]
    if pretrain:
        parts.append(f"{pretrain} critic-only iteration{'s' if pretrain > 1 else ''} "
                     "(ppo.value_pretrain_steps), then")
    parts.append(f"{cfg.run.iterations} policy iteration{'s' if cfg.run.iterations > 1 else ''} "
                 "(run.iterations)")
    if cfg.run.max_env_steps is not None:
        parts.append(f"or {cfg.run.max_env_steps} environment steps (run.max_env_steps), "
                     "whichever comes first;")
    else:
        parts[-1] += ";"
    parts.append(f"writing {cfg.run_dir}")
    return " ".join(parts)


def interrupted(t: Trainer) -> str:
    """What an interrupted run kept and lost, and how to go on."""
    last = latest_checkpoint(t.run_dir)
    if last is None:
        return (f"interrupted in iteration {t.iteration + 1} before the first checkpoint: nothing is kept; "
                f"agentrl train --resume {t.run_dir} starts the run again")
    return (f"interrupted in iteration {t.iteration + 1}: the last checkpoint is {last.name}; "
            f"agentrl train --resume {t.run_dir} goes on from there (the iterations after it run again)")


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


# ``agentrl.train(...)`` calls ``agentrl.api.train``: the module is the API's name too (agentrl/api.py).
api.callable_module(__name__, api.train)
