"""The training configuration: nested frozen dataclasses, read from YAML with ``--set`` overrides.

``agentrl train --config FILE.yaml [--set key=value ...]`` takes its settings from here. The module sits
at the bottom of the import graph with ``types`` (docs/design.md section 3) and imports no torch, so
``--help`` stays instant; only ``to_runner_config`` and the rollout checks reach up to the torch-free
``agentrl.runner`` and ``agentrl.compaction``, inside functions.

- ``TrainConfig`` is the tree: ``run``, ``model``, ``env``, ``rollout`` (with ``rollout.compaction``),
  ``algorithm``, ``ppo``, ``grpo``, ``optim``. Every field is described in its class's Attributes
  section. The math fields carry the names, the choices and the ranges of the keyword arguments of
  ``agentrl.advantages`` and ``agentrl.losses`` that they feed (``gamma``, ``clip_low``, ``k3_max``,
  ``truncation``, ...); the rollout fields are exactly ``agentrl.runner.RunnerConfig``'s.
- Every section checks itself on construction: the type of each field first (an int is taken for a
  float, a list for a tuple, a mapping for a section), then its range, then rules across sections.
  A bad value raises ``ConfigError`` (a ``ValueError``) with a one-line message that starts with the
  field's dotted path: ``ppo.clip_high: expected a number >= 0, got -1.0``.
- ``load_config(path, overrides)`` reads YAML, applies ``--set a.b=value`` overrides (the value read by
  YAML's rules for one scalar: ``1`` is an int, ``0.5`` and ``1e-6`` floats, ``null`` None, ``[0.9,
  0.95]`` a list) and builds the tree. A key no section has is ``unknown key 'ppo.foo' (known: ...)``;
  under ``env.options`` any key goes (the environment checks its own options when it is built).
- ``config_to_dict`` and ``dump_config`` give the resolved config back as plain data and YAML text,
  which ``load_config`` reads back to an equal config: a run writes it into its directory
  (``save_config``).

The type checks live in ``agentrl.config_fields`` and the YAML reading (a float ``1e-6`` without a dot,
no key given twice) in ``agentrl.config_yaml``, the ``ppo`` and ``grpo`` sections in
``agentrl.config_algorithms``; every other field and its default is here.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from agentrl.config_algorithms import GRPOSection, PPOSection
from agentrl.config_fields import ConfigError, Section, checked, from_mapping, require
from agentrl.config_yaml import apply_override, read_config_file

if typing.TYPE_CHECKING:
    from agentrl.compaction import CompactionConfig
    from agentrl.runner import RunnerConfig

# The choices of the math modules (which import torch); tests/test_config.py checks they stay equal to
# agentrl.compaction.STRATEGIES and agentrl.models.SIZES (the algorithms' in agentrl.config_algorithms).
Strategy = Literal["policy", "env", "keep_last", "none"]
ModelSize = Literal["tiny", "small"]

_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
T = TypeVar("T")
# An iteration's tasks are built before the first runs; beyond this many the run would never start.
MAX_EPISODES_PER_ITERATION = 1_000_000


# ----------------------------------------------------------------------------------------------------
# The sections.


@dataclass(frozen=True)
class RunSection(Section):
    """The run's name, seed, length, checkpoints and directory.

    Attributes:
        name: the run's name, its directory under ``runs/``: letters, digits, ``.``, ``_`` and ``-``.
        seed: seeds everything random: a fresh model's weights, the task seeds, sampling, mini-batch order.
        iterations: policy updates, one rollout batch each; ``ppo.value_pretrain_steps`` come on top.
        checkpoint_every: save a checkpoint every this many iterations; 0: none but the final one (the
            last iteration always saves one).
        run_dir: the run's directory; null: ``runs/<name>`` (the ``dir`` property resolves it).
        max_env_steps: a budget in environment steps (policy turns, summed over every episode of every
            iteration, ``rollout/env_steps``): the run stops after the iteration that reaches it, and
            checkpoints there; null: no budget, ``iterations`` alone decides. ``agentrl compare`` gives
            every run the same budget.
        keep_checkpoints: keep the newest this many checkpoints (plus the best one, below) and remove
            older ones after each save; null: keep every checkpoint.
        keep_best: a metric (a ``metrics.jsonl`` key, e.g. ``rollout/success_rate``): the checkpoint
            whose iteration scored best on it is kept too, however old; null: none kept for it.
        best_mode: ``max`` (higher is better) or ``min``, for ``keep_best``.
    """

    SECTION: ClassVar[str] = "run"
    name: str = "run"
    seed: int = 0
    iterations: int = 100
    checkpoint_every: int = 10
    run_dir: str | None = None
    max_env_steps: int | None = None
    keep_checkpoints: int | None = 3
    keep_best: str | None = "rollout/success_rate"
    best_mode: Literal["max", "min"] = "max"

    def _validate(self) -> None:
        self._check("name", _NAME_RE.fullmatch(self.name) is not None,
                    "letters, digits, '.', '_' or '-' (not starting with '.')")
        self._check("seed", 0 <= self.seed < 2**32, "an int in [0, 2**32)")  # numpy and torch take 32 bits
        self._check("iterations", self.iterations >= 1, "an int >= 1")
        self._check("checkpoint_every", self.checkpoint_every >= 0, "an int >= 0")
        self._check("run_dir", self.run_dir is None or self.run_dir.strip() != "", "null or a non-empty path")
        self._check("max_env_steps", self.max_env_steps is None or self.max_env_steps >= 1,
                    "null or an int >= 1")
        self._check("keep_checkpoints", self.keep_checkpoints is None or self.keep_checkpoints >= 1,
                    "null or an int >= 1")
        self._check("keep_best", self.keep_best is None or re.fullmatch(r"[a-z_]+/[\w/+.-]+", self.keep_best)
                    is not None, "null or a metric key such as rollout/success_rate")

    @property
    def dir(self) -> Path:
        """Where the run writes: ``run_dir``, or ``runs/<name>``."""
        return Path(self.run_dir) if self.run_dir is not None else Path("runs") / self.name


@dataclass(frozen=True)
class ModelSection(Section):
    """The policy (and the critic and reference built from it).

    Attributes:
        path: a Hugging Face causal LM directory to start from; null: a fresh default model of size
            ``init_size`` with its locally trained tokenizer (``agentrl init-model``), seeded by ``run.seed``.
        init_size: the default model's size when ``path`` is null: ``tiny`` (~1M parameters, the CPU
            default) or ``small`` (~10M).
        dtype: the weights' dtype: ``float32`` or ``bfloat16`` (float16 is left out: the losses' log-ratio
            clamp, e^20, is not finite in it).
        critic: ``separate``: a model of the policy's architecture with a scalar value head, initialised
            from the policy's weights; ``shared``: a value head on the policy's own backbone. PPO only.
        device: ``auto`` (cuda when there is one, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    SECTION: ClassVar[str] = "model"
    path: str | None = None
    init_size: ModelSize = "tiny"
    dtype: Literal["float32", "bfloat16"] = "float32"
    critic: Literal["separate", "shared"] = "separate"
    device: str = "auto"

    def _validate(self) -> None:
        self._check("path", self.path is None or self.path.strip() != "", "null or a non-empty path")
        self._check("device", _DEVICE_RE.fullmatch(self.device) is not None, "auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class EnvSection(Section):
    """The environment the tasks come from.

    Attributes:
        name: a registered environment (``agentrl envs``) or a ``module:attr`` import path of an
            environment class (or a function annotated to return one); a config is trusted code.
        options: keyword options for the environment's constructor (``size: small``); the environment
            checks them when it is built.
    """

    SECTION: ClassVar[str] = "env"
    name: str = "arithmetic"
    options: dict[str, Any] = field(default_factory=dict)

    def _validate(self) -> None:
        self._check("name", self.name.strip() != "", "a non-empty environment name")


@dataclass(frozen=True)
class CompactionSection(Section):
    """How an episode that outgrows its context window goes on (``agentrl.compaction``).

    Attributes:
        strategy: ``policy`` (the policy writes a summary, trained with the episode's reward), ``env``
            (the environment's state digest), ``keep_last`` (old turns dropped) or ``none`` (the episode
            is truncated when its window is full).
        keep_last_turns: turns kept verbatim in the new window (ignored by ``none``).
        max_summary_tokens: the most tokens of a ``policy`` summary.
        summary_request: the user message that asks for the summary; null: the built-in request.
    """

    SECTION: ClassVar[str] = "rollout.compaction"
    strategy: Strategy = "policy"
    keep_last_turns: int = 2
    max_summary_tokens: int = 128
    summary_request: str | None = None

    def _validate(self) -> None:
        checked(self.SECTION, self.to_compaction_config)

    def to_compaction_config(self) -> CompactionConfig:
        """The runner's ``agentrl.compaction.CompactionConfig`` of this section."""
        from agentrl.compaction import CompactionConfig

        extra = {} if self.summary_request is None else {"summary_request": self.summary_request}
        return CompactionConfig(
            strategy=self.strategy,
            keep_last_turns=self.keep_last_turns,
            max_summary_tokens=self.max_summary_tokens,
            **extra,
        )


@dataclass(frozen=True)
class VLLMSection(Section):
    """How the vLLM engine starts when ``rollout.backend`` is ``vllm`` (``agentrl.vllm_sampler``).

    Attributes:
        dtype: the engine's weights and activations: ``float32``, ``bfloat16``, ``float16`` or ``auto``.
        gpu_memory_utilization: the fraction of GPU memory the engine may take, in (0, 1]; ignored on a CPU.
        max_model_len: the longest request (a window plus its response); null: the model's own limit.
            At least ``rollout.context_budget``.
        enable_prefix_caching: reuse the KV cache of the turns a request shares with an earlier one.
        enforce_eager: no CUDA graphs (a faster start, a slower decode).
        cpu_kvcache_gib: on a CPU, the KV cache in GiB (vLLM's ``VLLM_CPU_KVCACHE_SPACE``), >= 1.
    """

    SECTION: ClassVar[str] = "rollout.vllm"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    gpu_memory_utilization: float = 0.5
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = True
    cpu_kvcache_gib: int = 2

    def _validate(self) -> None:
        self._check("gpu_memory_utilization", 0 < self.gpu_memory_utilization <= 1, "a number in (0, 1]")
        ok = self.max_model_len is None or self.max_model_len >= 2
        self._check("max_model_len", ok, "null or an int >= 2")
        self._check("cpu_kvcache_gib", self.cpu_kvcache_gib >= 1, "an int >= 1")


@dataclass(frozen=True)
class RolloutSection(Section):
    """What one iteration samples, and the runner's budgets (``agentrl.runner``, docs/runner.md).

    Attributes:
        tasks_per_iteration: tasks (environment seeds) sampled per iteration.
        group_size: episodes per task (GRPO's G; >= 2 for GRPO). An iteration has
            ``tasks_per_iteration * group_size`` episodes (``episodes_per_iteration``).
        max_response_tokens: the most tokens of one response.
        context_budget: the most tokens of one context window (one sub-trace).
        max_turns: the most actions in one episode.
        max_total_tokens: the most tokens over all of an episode's sub-traces; null: no cap.
        max_compactions: the most compactions in one episode.
        temperature: sampling temperature (0 = greedy).
        top_p: nucleus sampling mass, in (0, 1].
        max_concurrent: episodes in flight at once (one sampling batch).
        tool_error_penalty: reward subtracted per failed tool call, on the turn that made it (a shaping
            term: the episode's reward includes it, its success does not); >= 0, 0 = off.
        env_timeout_s: seconds one call into the environment (building it, ``reset``, ``step``) may take;
            past it the call is abandoned and only its episode (or task) ends; null or 0: no limit.
        max_observation_chars: the most characters of one observation message (and of the task text)
            before it is tokenised; longer ones are cut with a marker; null: 16 per token of
            ``context_budget``.
        max_empty_iterations: stop the run (exit code 3, with the reasons) after this many iterations
            in a row in which every task failed and no episode was collected.
        compaction: the compaction strategy and its settings.
        backend: the sampler: ``torch`` (the policy itself, in this process) or ``vllm`` (a vLLM engine
            that receives the policy's weights after every update; needs vLLM installed).
        vllm: the vLLM engine's settings (used with ``backend: vllm``).
        batching: ``static`` rounds (every episode in flight samples its turn, then the environments
            step) or ``continuous`` (a turn leaves the batch when it ends, tools run on a thread pool
            while the others decode; ``agentrl.continuous``; torch backend, Qwen2 models, in process).
    """

    SECTION: ClassVar[str] = "rollout"
    tasks_per_iteration: int = 16
    group_size: int = 1
    max_response_tokens: int = 128
    context_budget: int = 1024
    max_turns: int = 32
    max_total_tokens: int | None = None
    max_compactions: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_concurrent: int = 64
    tool_error_penalty: float = 0.0
    env_timeout_s: float | None = 60.0
    max_observation_chars: int | None = None
    max_empty_iterations: int = 3
    compaction: CompactionSection = field(default_factory=CompactionSection)
    backend: Literal["torch", "vllm"] = "torch"
    vllm: VLLMSection = field(default_factory=VLLMSection)
    batching: Literal["static", "continuous"] = "static"

    def _validate(self) -> None:
        self._check("batching", self.batching == "static" or self.backend == "torch",
                    "static with rollout.backend vllm (continuous batching samples with the torch policy)")
        self._check("tasks_per_iteration", self.tasks_per_iteration >= 1, "an int >= 1")
        self._check("group_size", self.group_size >= 1, "an int >= 1")
        self._check("max_empty_iterations", self.max_empty_iterations >= 1, "an int >= 1")
        # every episode of an iteration is a task in memory before the first one runs
        self._check("tasks_per_iteration", self.episodes_per_iteration <= MAX_EPISODES_PER_ITERATION,
                    f"at most {MAX_EPISODES_PER_ITERATION:,} episodes per iteration (times group_size)")
        checked(self.SECTION, self.to_runner_config)  # the runner's own budget rules, one source
        longest = self.vllm.max_model_len
        if self.backend == "vllm" and longest is not None and longest < self.context_budget:
            raise ConfigError(f"rollout.vllm.max_model_len: expected at least rollout.context_budget "
                              f"({self.context_budget}), got {longest}")

    @property
    def episodes_per_iteration(self) -> int:
        """Episodes sampled per iteration: ``tasks_per_iteration * group_size``."""
        return self.tasks_per_iteration * self.group_size

    def to_runner_config(self) -> RunnerConfig:
        """The ``agentrl.runner.RunnerConfig`` of these budgets and sampling settings."""
        from agentrl.runner import RunnerConfig

        return RunnerConfig(
            max_response_tokens=self.max_response_tokens,
            context_budget=self.context_budget,
            max_turns=self.max_turns,
            max_total_tokens=self.max_total_tokens,
            max_compactions=self.max_compactions,
            compaction=self.compaction.to_compaction_config(),
            temperature=self.temperature,
            top_p=self.top_p,
            max_concurrent=self.max_concurrent,
            tool_error_penalty=self.tool_error_penalty,
            env_timeout_s=self.env_timeout_s,
            max_observation_chars=self.max_observation_chars,
        )


@dataclass(frozen=True)
class OptimSection(Section):
    """The optimisers (AdamW) and the micro-batch size.

    Attributes:
        actor_lr: the policy's learning rate, > 0.
        critic_lr: the critic's learning rate, > 0 (the separate critic, or the value head when shared).
        betas: AdamW's two betas, each in [0, 1).
        eps: AdamW's epsilon, > 0.
        weight_decay: AdamW's decoupled weight decay, >= 0.
        grad_clip: clip each model's gradient to this global norm, > 0; null: no clipping.
        micro_batch_tokens: the most tokens (padding included) of one forward/backward; gradients are
            accumulated over micro-batches with the mini-batch's global normaliser. At least
            ``rollout.context_budget``, so a sub-trace always fits.
        shared_prefix: read a micro-batch's common prefix (the system prompt and tool schemas, a group's
            task) once, not once per row, when it is at least this many tokens; 0: never. Exact up to
            float rounding (``agentrl.forward.shared_prefix_forward``); needs a Hugging Face model.
    """

    SECTION: ClassVar[str] = "optim"
    actor_lr: float = 1e-6
    critic_lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    micro_batch_tokens: int = 4096
    shared_prefix: int = 16

    def _validate(self) -> None:
        self._check("actor_lr", self.actor_lr > 0, "a number > 0")
        self._check("critic_lr", self.critic_lr > 0, "a number > 0")
        self._check("betas", all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
        self._check("eps", self.eps > 0, "a number > 0")
        self._check("weight_decay", self.weight_decay >= 0, "a number >= 0")
        self._check("grad_clip", self.grad_clip is None or self.grad_clip > 0, "null or a number > 0")
        self._check("micro_batch_tokens", self.micro_batch_tokens >= 1, "an int >= 1")
        self._check("shared_prefix", self.shared_prefix >= 0, "an int >= 0")


@dataclass(frozen=True)
class DistributedSection(Section):
    """Where a run's work is placed (docs/distributed.md); the defaults are one process, without Ray.

    Attributes:
        rollout_workers: Ray actors that play the episodes, each with its own sampler and environments;
            0: the runner in this process (Ray is not needed).
        rollout_shards: an iteration's tasks are cut into this many shards, each played with its own
            sampling seed; the episodes depend on the shards, never on how many workers play them. At
            most ``rollout.tasks_per_iteration``; null: ``max(1, rollout_workers)``.
        worker_cpus: the CPUs Ray reserves for each rollout worker, > 0 (fractions allowed).
        worker_gpus: the GPUs Ray reserves for each rollout worker, >= 0; above 0 it samples on CUDA.
        worker_timeout_s: a shard that runs longer than this is declared hung: its worker is killed, its
            finished episodes kept and its other tasks recorded as failures; > 0.
        shard_retries: how many times a shard whose worker died is played again on a new worker (it
            gives the same episodes), >= 0; after that its tasks are recorded as failures.
        ray_address: the Ray cluster to join (``ray.init(address=...)``); null: start a local one.
        learner_ranks: data-parallel learner processes (torch.distributed), >= 1; each updates on its
            share of every mini-batch, with the loss normalisers summed over all ranks.
        backend: the torch.distributed backend of the learner ranks: ``gloo`` (CPU) or ``nccl`` (GPU).
        learner_sharding: ``ddp``: every learner rank holds the whole models; ``fsdp2``: each holds a
            shard of every parameter, gradient and optimiser state (``fully_shard``), for models that do
            not fit one device; needs ``optim.shared_prefix`` 0 and a separate critic (docs/distributed.md).
        overlap: one-step off-policy: iteration k+1's rollout runs with the weights of k-1 while k
            updates (docs/distributed.md says what it changes); false: every rollout uses the newest.
    """

    SECTION: ClassVar[str] = "distributed"
    rollout_workers: int = 0
    rollout_shards: int | None = None
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    worker_timeout_s: float = 600.0
    shard_retries: int = 1
    ray_address: str | None = None
    learner_ranks: int = 1
    backend: Literal["gloo", "nccl"] = "gloo"
    learner_sharding: Literal["ddp", "fsdp2"] = "ddp"
    overlap: bool = False

    def _validate(self) -> None:
        self._check("rollout_workers", self.rollout_workers >= 0, "an int >= 0")
        self._check("rollout_shards", self.rollout_shards is None or self.rollout_shards >= 1,
                    "null or an int >= 1")
        self._check("worker_cpus", self.worker_cpus > 0, "a number > 0")
        self._check("worker_gpus", self.worker_gpus >= 0, "a number >= 0")
        self._check("worker_timeout_s", self.worker_timeout_s > 0, "a number > 0")
        self._check("shard_retries", self.shard_retries >= 0, "an int >= 0")
        self._check("ray_address", self.ray_address is None or self.rollout_workers >= 1,
                    "null when rollout_workers is 0 (no Ray worker to place)")
        self._check("learner_ranks", self.learner_ranks >= 1, "an int >= 1")

    @property
    def shards(self) -> int:
        """The iteration's task shards: ``rollout_shards``, or one per worker (at least one)."""
        return self.rollout_shards if self.rollout_shards is not None else max(1, self.rollout_workers)


@dataclass(frozen=True)
class TrainConfig(Section):
    """Everything ``agentrl train`` needs; one section per concern.

    Attributes:
        run: name, seed, iterations, checkpoints, directory.
        model: the policy model, its dtype and device, and the critic's kind.
        env: the environment and its options.
        rollout: tasks and episodes per iteration, budgets, sampling, compaction.
        algorithm: ``ppo`` or ``grpo``; the section of that name is the one used.
        ppo: PPO's settings (used when ``algorithm`` is ppo).
        grpo: GRPO's settings (used when ``algorithm`` is grpo).
        optim: optimisers and micro-batch size.
        distributed: rollout workers on Ray, data-parallel learner ranks, the overlap.
    """

    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    env: EnvSection = field(default_factory=EnvSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: Literal["ppo", "grpo"] = "ppo"
    ppo: PPOSection = field(default_factory=PPOSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    optim: OptimSection = field(default_factory=OptimSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def _validate(self) -> None:
        rollout, algo = self.rollout, self.algorithm_section
        if self.algorithm == "grpo":
            require(rollout.group_size >= 2, "rollout.group_size",
                    "an int >= 2 with algorithm grpo (it compares the episodes of one task)",
                    rollout.group_size)
        episodes = rollout.episodes_per_iteration
        require(algo.minibatches <= episodes, f"{self.algorithm}.minibatches",
                f"at most the {episodes} episodes per iteration (rollout.tasks_per_iteration * "
                "rollout.group_size)", algo.minibatches)
        require(self.optim.micro_batch_tokens >= rollout.context_budget, "optim.micro_batch_tokens",
                f"at least rollout.context_budget = {rollout.context_budget} (a micro-batch holds whole "
                "sub-traces)", self.optim.micro_batch_tokens)
        dist = self.distributed
        require(dist.shards <= rollout.tasks_per_iteration, "distributed.rollout_shards",
                f"at most rollout.tasks_per_iteration = {rollout.tasks_per_iteration} (a shard holds "
                "whole tasks)", dist.shards)
        require(dist.backend == "gloo" or self.model.device != "cpu", "distributed.backend",
                "gloo with model.device cpu (nccl needs GPUs)", dist.backend)
        require(rollout.batching == "static" or dist.rollout_workers == 0, "rollout.batching",
                "static with distributed.rollout_workers >= 1 (continuous batching runs in process)",
                rollout.batching)
        if dist.learner_sharding == "fsdp2":  # every rank must run the same passes (agentrl.fsdp)
            require(self.optim.shared_prefix == 0, "optim.shared_prefix",
                    "0 with distributed.learner_sharding fsdp2 (a shared prefix changes the number of "
                    "forward passes from rank to rank)", self.optim.shared_prefix)
            require(not self.needs_critic or self.model.critic == "separate", "model.critic",
                    "separate with distributed.learner_sharding fsdp2 (a shared head reads the sharded "
                    "backbone outside the policy's forward)", self.model.critic)

    @property
    def algorithm_section(self) -> PPOSection | GRPOSection:
        """The section of the chosen algorithm."""
        return self.ppo if self.algorithm == "ppo" else self.grpo

    @property
    def needs_critic(self) -> bool:
        """PPO trains a critic; GRPO has none."""
        return self.algorithm == "ppo"

    @property
    def needs_reference(self) -> bool:
        """A frozen reference model is loaded only when the chosen algorithm's KL term is on."""
        return self.algorithm_section.uses_kl

    @property
    def horizon(self) -> int:
        """The normaliser of ``seq-mean-token-sum-norm``: the section's ``horizon`` or the context budget."""
        return self.algorithm_section.horizon or self.rollout.context_budget

    @property
    def run_dir(self) -> Path:
        """Where the run writes (``run.dir``)."""
        return self.run.dir

    def to_runner_config(self) -> RunnerConfig:
        """The ``agentrl.runner.RunnerConfig`` of the rollout section."""
        return self.rollout.to_runner_config()


# ----------------------------------------------------------------------------------------------------
# YAML in and out (the raw mapping: agentrl.config_yaml).


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read the YAML file ``path`` (None: all defaults), apply ``overrides`` in order, and build and check
    the config. An override of ``env.name`` to another environment drops the ``env.options`` given
    before it (they were that environment's). Raises ``ConfigError`` (a ValueError, one line) on a
    missing file, bad YAML, an unknown key or a bad value."""
    data = read_config_file(path) if path is not None else {}
    for item in overrides:
        before = _env_name(data)
        apply_override(data, item)
        if item.partition("=")[0].strip() == "env.name" and _env_name(data) != before:
            # options belong to the environment they were written for: graph_nav's size=small is no
            # option of another one; env.options.* given after the new name still apply
            data["env"].pop("options", None)
    return from_mapping(TrainConfig, data, "")


def _env_name(data: Mapping[str, Any]) -> Any:
    env = data.get("env")
    return env.get("name", EnvSection.name) if isinstance(env, dict) else EnvSection.name


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config (or one section) as plain YAML-ready data: sections as dicts, tuples as lists."""

    def plain(value: Any) -> Any:
        if is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML text; ``load_config`` reads it back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write ``dump_config(cfg)`` to ``path`` (creating its directory) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("# The resolved config of this run (agentrl.config.dump_config).\n" + dump_config(cfg))
    return p
