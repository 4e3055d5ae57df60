"""The training config: examples load and round-trip, overrides, every validation rule, unknown keys."""

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from agentrl.config import (
    CompactionSection,
    ConfigError,
    DistributedSection,
    EnvSection,
    GRPOSection,
    ModelSection,
    ModelSize,
    OptimSection,
    PPOSection,
    RolloutSection,
    RunSection,
    Strategy,
    TrainConfig,
    VLLMSection,
    config_to_dict,
    dump_config,
    load_config,
    save_config,
)
from agentrl.config_algorithms import Aggregation, GAEMode, KLKind, Truncation

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SECTIONS = (
    TrainConfig, RunSection, ModelSection, EnvSection, RolloutSection, CompactionSection, PPOSection,
    GRPOSection, OptimSection, DistributedSection,
)


def error(overrides: list[str], path: Path | None = None) -> str:
    """The one-line message of the ConfigError that loading with ``overrides`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message and message == message.strip()
    return message


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


# ---- examples and round trips ----------------------------------------------------------------------


def test_the_six_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    expected = {f"{a}_{e}.yaml" for a in ("ppo", "grpo") for e in ("arithmetic", "graph_nav", "ledger")}
    assert expected <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_round_trips_and_is_tiny(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    assert f"agentrl train --config examples/{path.name}" in path.read_text().split("\n\n")[0]
    algorithm, env = path.stem.split("_", 1)  # <algo>_<env>.yaml, or <algo>_<env>_<setting>.yaml
    assert (cfg.algorithm, cfg.run.name) == (algorithm, path.stem)
    assert env == cfg.env.name or env.startswith(f"{cfg.env.name}_"), (env, cfg.env.name)
    assert cfg.model.path is None and cfg.model.init_size == "tiny"
    assert cfg.rollout.episodes_per_iteration <= 16 and cfg.run.iterations <= 5
    # long settings: 2 KiB; code_fix too, whose seven tool schemas alone take about 930 prompt tokens
    wide = path.stem.endswith("_long") or cfg.env.name == "code_fix"
    assert cfg.rollout.context_budget <= (2048 if wide else 1024)
    if algorithm == "grpo":
        assert cfg.rollout.group_size == 4
    again = load_config(save_config(cfg, tmp_path / "resolved.yaml"))
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


def test_defaults_round_trip_and_equal_the_dataclass_defaults(tmp_path: Path) -> None:
    cfg = load_config(None)
    assert cfg == TrainConfig()
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg
    assert load_config(write(tmp_path, "")) == cfg  # an empty file is all defaults
    assert load_config(write(tmp_path, "ppo:\nrollout:\n  compaction:\n")) == cfg  # empty sections too


def test_config_to_dict_is_plain_yaml_data() -> None:
    d = config_to_dict(load_config(None, ["env.options.size=small"]))
    assert d["optim"]["betas"] == [0.9, 0.999]
    assert d["rollout"]["compaction"]["strategy"] == "policy"
    assert d["env"]["options"] == {"size": "small"}
    assert list(d) == ["run", "model", "env", "rollout", "algorithm", "ppo", "grpo", "optim", "distributed"]


# ---- overrides ---------------------------------------------------------------------------------------


def test_overrides_nested_and_coerced() -> None:
    cfg = load_config(None, [
        "ppo.gamma=1",  # int for a float field
        "optim.actor_lr=1e-5",  # YAML 1.1 reads this as a string; here it is a float
        "optim.critic_lr=3.0e-5",
        "ppo.dual_clip=3",
        "ppo.value_clip=null",
        "ppo.actor_lam=0.95",
        "ppo.whiten_advantages=true",
        "optim.betas=[0.9, 0.95]",  # a list for a tuple field
        "rollout.compaction.strategy=keep_last",
        "rollout.compaction.keep_last_turns=0",
        "rollout.max_total_tokens=4096",
        "env.name=graph_nav",
        "env.options.size=small",
        "env.options.num_rooms=6",
        "run.name=2024",  # an int for a string field
        "run.run_dir=/tmp/somewhere",
    ])
    assert cfg.ppo.gamma == 1.0 and isinstance(cfg.ppo.gamma, float)
    assert cfg.optim.actor_lr == 1e-5 and isinstance(cfg.optim.actor_lr, float)
    assert cfg.optim.critic_lr == 3e-5
    assert cfg.ppo.dual_clip == 3.0 and isinstance(cfg.ppo.dual_clip, float)
    assert cfg.ppo.value_clip is None
    assert cfg.ppo.actor_lam == 0.95 and cfg.ppo.whiten_advantages is True
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.rollout.compaction.strategy == "keep_last" and cfg.rollout.compaction.keep_last_turns == 0
    assert cfg.rollout.max_total_tokens == 4096
    assert cfg.env == EnvSection("graph_nav", {"size": "small", "num_rooms": 6})
    assert cfg.run.name == "2024" and cfg.run.dir == Path("/tmp/somewhere")


def test_overrides_apply_over_the_file_in_order(tmp_path: Path) -> None:
    p = write(tmp_path, "ppo:\n  gamma: 0.9\n  clip_low: 0.1\nenv:\n  options:\n    size: small\n")
    cfg = load_config(p, ["ppo.gamma=0.99", "ppo.gamma=0.995", "env.options.num_rooms=8"])
    assert (cfg.ppo.gamma, cfg.ppo.clip_low) == (0.995, 0.1)
    assert cfg.env.options == {"size": "small", "num_rooms": 8}
    cfg = load_config(p, ["env.options={}"])  # a whole mapping replaces the file's
    assert cfg.env.options == {}


def test_switching_algorithm_by_override() -> None:
    cfg = load_config(ROOT / "examples" / "ppo_arithmetic.yaml", ["algorithm=grpo", "rollout.group_size=4"])
    assert cfg.algorithm == "grpo" and cfg.algorithm_section is cfg.grpo


@pytest.mark.parametrize(
    ("item", "prefix"),
    [
        ("noequals", "--set: expected section.key=value"),
        ("=1", "--set: expected section.key=value"),
        ("ppo..gamma=1", "--set: expected section.key=value"),
        ("ppo.gamma=[1", "--set ppo.gamma: invalid YAML"),
        ("ppo=3", "ppo: expected a mapping, got 3"),
        ("ppo.gamma.x=1", "ppo.gamma: expected a finite number, got {'x': 1}"),
        ("run.name=", "run.name: expected a string, got null"),
    ],
)
def test_bad_override(item: str, prefix: str) -> None:
    assert error([item]).startswith(prefix)


def test_override_through_a_scalar_in_the_file(tmp_path: Path) -> None:
    assert error(["ppo.gamma=1"], write(tmp_path, "ppo: 3\n")).startswith("ppo: expected a mapping, got 3")


# ---- files -------------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error([], missing) == f"config: no such file {str(missing)!r}"


def test_invalid_yaml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "ppo:\n  gamma: [1\n  clip_low: 0.2\n")
    assert error([], p).startswith(f"config {str(p)!r}: invalid YAML")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    p = write(tmp_path, "- ppo\n- grpo\n")
    assert error([], p) == f"config {str(p)!r}: expected a mapping of sections, got ['ppo', 'grpo']"


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "ppo:\n  gamma: 0.9\n  gamma: 0.8\n")
    message = error([], p)
    assert message.startswith(f"config {str(p)!r}: invalid YAML") and "duplicate key 'gamma'" in message


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    text = "ppo: &clip\n  clip_low: 0.1\n  clip_high: 0.3\ngrpo:\n  <<: *clip\n  clip_high: 0.4\n"
    cfg = load_config(write(tmp_path, text))
    assert (cfg.grpo.clip_low, cfg.grpo.clip_high, cfg.ppo.clip_high) == (0.1, 0.4, 0.3)


def test_exponent_without_dot_is_a_float_in_files(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "optim:\n  actor_lr: 1e-6\n  critic_lr: 2E-5\n  eps: 1.0e-7\n"))
    assert (cfg.optim.actor_lr, cfg.optim.critic_lr, cfg.optim.eps) == (1e-6, 2e-5, 1e-7)


# ---- unknown keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "known"),
    [
        ("foo", "run, model, env, rollout, algorithm, ppo, grpo, optim, distributed"),
        ("run.foo", "name, seed, iterations, checkpoint_every, run_dir"),
        ("model.foo", "path, init_size"),
        ("env.foo", "name, options"),
        ("rollout.foo", "tasks_per_iteration, group_size"),
        ("rollout.compaction.foo", "strategy, keep_last_turns, max_summary_tokens, summary_request"),
        ("ppo.foo", "gamma, critic_lam, actor_lam"),
        ("grpo.foo", "eps, scale_by_std"),
        ("optim.foo", "actor_lr, critic_lr"),
    ],
)
def test_unknown_key_at_every_level(key: str, known: str, tmp_path: Path) -> None:
    message = error([f"{key}=1"])
    assert message.startswith(f"unknown key {key!r} (known: {known}") and message.endswith(")")
    # the same from a file
    *sections, last = key.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections)) + f"{'  ' * len(sections)}{last}: 1\n"
    assert error([], write(tmp_path, text)) == message


def test_env_options_take_any_key() -> None:
    assert load_config(None, ["env.options.anything=1"]).env.options == {"anything": 1}


# ---- validation: every rule, message starting with the dotted field ----------------------------------

# (override(s), expected start of the message). Each rule of each section, once.
RULES = [
    # run
    ("run.name=a/b", "run.name: expected letters, digits"),
    ("run.name=.hidden", "run.name: expected letters, digits"),
    ("run.name=[1]", "run.name: expected a string, got [1]"),
    ("run.seed=-1", "run.seed: expected an int in [0, 2**32), got -1"),
    ("run.seed=100000000000000000000", "run.seed: expected an int in [0, 2**32)"),
    ("rollout.tasks_per_iteration=1000000000000", "rollout.tasks_per_iteration: expected at most 1,000,000"),
    ("run.seed=true", "run.seed: expected an int, got true"),
    ("run.iterations=0", "run.iterations: expected an int >= 1, got 0"),
    ("run.iterations=1.5", "run.iterations: expected an int, got 1.5"),
    ("run.checkpoint_every=-2", "run.checkpoint_every: expected an int >= 0, got -2"),
    ("run.run_dir=' '", "run.run_dir: expected null or a non-empty path, got ' '"),
    ("run.max_env_steps=0", "run.max_env_steps: expected null or an int >= 1, got 0"),
    ("run.max_env_steps=1.5", "run.max_env_steps: expected an int or null, got 1.5"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints: expected null or an int >= 1, got 0"),
    ("run.keep_best='success rate'",
     "run.keep_best: expected null or a metric key such as rollout/success_rate"),
    ("run.best_mode=highest", "run.best_mode: expected one of 'max', 'min', got 'highest'"),
    # model
    ("model.path=''", "model.path: expected null or a non-empty path, got ''"),
    ("model.init_size=huge", "model.init_size: expected one of 'tiny', 'small', got 'huge'"),
    ("model.dtype=float16", "model.dtype: expected one of 'float32', 'bfloat16', got 'float16'"),
    ("model.critic=none", "model.critic: expected one of 'separate', 'shared', got 'none'"),
    ("model.device=tpu", "model.device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    # env
    ("env.name=''", "env.name: expected a non-empty environment name, got ''"),
    ("env.options=3", "env.options: expected a mapping, got 3"),
    # rollout (the runner's own rules, under rollout.)
    ("rollout.tasks_per_iteration=0", "rollout.tasks_per_iteration: expected an int >= 1, got 0"),
    ("rollout.group_size=0", "rollout.group_size: expected an int >= 1, got 0"),
    ("rollout.max_response_tokens=0", "rollout.max_response_tokens: expected an int >= 1, got 0"),
    ("rollout.context_budget=100", "rollout.context_budget: 100 tokens cannot hold"),
    ("rollout.max_turns=0", "rollout.max_turns: expected an int >= 1, got 0"),
    ("rollout.max_total_tokens=0", "rollout.max_total_tokens: expected an int >= 1 or None, got 0"),
    ("rollout.max_compactions=-1", "rollout.max_compactions: expected an int >= 0, got -1"),
    ("rollout.temperature=-0.5", "rollout.temperature: expected a finite number >= 0, got -0.5"),
    ("rollout.temperature=.inf", "rollout.temperature: expected a finite number, got inf"),
    ("rollout.top_p=0", "rollout.top_p: expected a number in (0, 1], got 0.0"),
    ("rollout.max_concurrent=0", "rollout.max_concurrent: expected an int >= 1, got 0"),
    ("rollout.tool_error_penalty=-0.1",
     "rollout.tool_error_penalty: expected a finite number >= 0, got -0.1"),
    ("rollout.env_timeout_s=-1", "rollout.env_timeout_s: expected null or a finite number >= 0, got -1"),
    ("rollout.max_observation_chars=0", "rollout.max_observation_chars: expected an int >= 1 or None, got 0"),
    ("rollout.max_empty_iterations=0", "rollout.max_empty_iterations: expected an int >= 1, got 0"),
    ("rollout.compaction.strategy=summary", "rollout.compaction.strategy: expected one of 'policy', "),
    ("rollout.compaction.keep_last_turns=-1", "rollout.compaction.keep_last_turns: expected an int >= 0"),
    ("rollout.backend=jax", "rollout.backend: expected one of 'torch', 'vllm', got 'jax'"),
    ("rollout.vllm.dtype=int8", "rollout.vllm.dtype: expected one of 'float32', 'bfloat16'"),
    ("rollout.vllm.gpu_memory_utilization=1.5",
     "rollout.vllm.gpu_memory_utilization: expected a number in (0, 1]"),
    ("rollout.vllm.max_model_len=1", "rollout.vllm.max_model_len: expected null or an int >= 2, got 1"),
    ("rollout.vllm.enable_prefix_caching=3", "rollout.vllm.enable_prefix_caching: expected true or false"),
    ("rollout.vllm.enforce_eager=sometimes", "rollout.vllm.enforce_eager: expected true or false"),
    ("rollout.vllm.cpu_kvcache_gib=0", "rollout.vllm.cpu_kvcache_gib: expected an int >= 1, got 0"),
    ("rollout.batching=dynamic", "rollout.batching: expected one of 'static', 'continuous', got 'dynamic'"),
    (["rollout.batching=continuous", "rollout.backend=vllm"],
     "rollout.batching: expected static with rollout.backend vllm"),
    (["rollout.batching=continuous", "distributed.rollout_workers=1"],
     "rollout.batching: expected static with distributed.rollout_workers >= 1"),
    (["rollout.backend=vllm", "rollout.vllm.max_model_len=512"],
     "rollout.vllm.max_model_len: expected at least rollout.context_budget (1024), got 512"),
    ("rollout.compaction.max_summary_tokens=0",
     "rollout.compaction.max_summary_tokens: expected an int >= 1"),
    ("rollout.compaction.max_summary_tokens=2000",
     "rollout.compaction.max_summary_tokens: 2000 does not fit"),
    ("rollout.compaction.summary_request=' '",
     "rollout.compaction.summary_request: expected a non-empty str"),
    # algorithm
    ("algorithm=ddpg", "algorithm: expected one of 'ppo', 'grpo', got 'ddpg'"),
    # ppo
    ("ppo.gamma=1.5", "ppo.gamma: expected a number in [0, 1], got 1.5"),
    ("ppo.gamma=abc", "ppo.gamma: expected a finite number, got 'abc'"),
    ("ppo.critic_lam=-0.1", "ppo.critic_lam: expected a number in [0, 1], got -0.1"),
    ("ppo.actor_lam=2", "ppo.actor_lam: expected a number in [0, 1] or 'adaptive', got 2.0"),
    ("ppo.actor_lam=auto", "ppo.actor_lam: expected a finite number or 'adaptive', got 'auto'"),
    ("ppo.alpha=0", "ppo.alpha: expected a number > 0, got 0.0"),
    ("ppo.gae_mode=global", "ppo.gae_mode: expected one of 'episode', 'local', got 'global'"),
    ("ppo.truncation=drop", "ppo.truncation: expected one of 'bootstrap', 'mask', 'zero', got 'drop'"),
    ("ppo.whiten_advantages=1", "ppo.whiten_advantages: expected true or false, got 1"),
    ("ppo.whiten_shift_mean=yes please", "ppo.whiten_shift_mean: expected true or false"),
    ("ppo.value_pretrain_steps=-1", "ppo.value_pretrain_steps: expected an int >= 0, got -1"),
    ("ppo.critic_updates=0", "ppo.critic_updates: expected an int >= 1, got 0"),
    ("ppo.epochs=0", "ppo.epochs: expected an int >= 1, got 0"),
    ("ppo.minibatches=0", "ppo.minibatches: expected an int >= 1, got 0"),
    ("ppo.clip_low=1", "ppo.clip_low: expected a number in [0, 1), got 1.0"),
    ("ppo.clip_high=-1", "ppo.clip_high: expected a number >= 0, got -1.0"),
    ("ppo.dual_clip=1", "ppo.dual_clip: expected null or a number > 1, got 1.0"),
    ("ppo.value_clip=0", "ppo.value_clip: expected null or a number > 0, got 0.0"),
    ("ppo.value_coef=0", "ppo.value_coef: expected a number > 0, got 0.0"),
    ("ppo.kl_beta=-0.1", "ppo.kl_beta: expected a number >= 0, got -0.1"),
    ("ppo.kl_kind=k4", "ppo.kl_kind: expected one of 'k1', 'k2', 'k3', got 'k4'"),
    ("ppo.kl_penalty=advantage", "ppo.kl_penalty: expected one of 'loss', 'reward', got 'advantage'"),
    ("ppo.k3_max=0", "ppo.k3_max: expected null or a number > 0, got 0.0"),
    ("ppo.aggregation=mean", "ppo.aggregation: expected one of 'token-mean', "),
    ("ppo.horizon=0", "ppo.horizon: expected null or an int >= 1, got 0"),
    # grpo
    ("grpo.eps=0", "grpo.eps: expected a number > 0, got 0.0"),
    ("grpo.scale_by_std=maybe", "grpo.scale_by_std: expected true or false, got 'maybe'"),
    ("grpo.train_summaries=2", "grpo.train_summaries: expected true or false"),
    ("grpo.tis_cap=0.5", "grpo.tis_cap: expected null or a number >= 1, got 0.5"),
    ("ppo.tis_cap=0", "ppo.tis_cap: expected null or a number >= 1, got 0.0"),
    ("ppo.train_summaries=no thanks", "ppo.train_summaries: expected true or false"),
    ("grpo.epochs=0", "grpo.epochs: expected an int >= 1, got 0"),
    ("grpo.minibatches=0", "grpo.minibatches: expected an int >= 1, got 0"),
    ("grpo.clip_low=-0.1", "grpo.clip_low: expected a number in [0, 1), got -0.1"),
    ("grpo.clip_high=-1", "grpo.clip_high: expected a number >= 0, got -1.0"),
    ("grpo.dual_clip=0.5", "grpo.dual_clip: expected null or a number > 1, got 0.5"),
    ("grpo.kl_beta=-1", "grpo.kl_beta: expected a number >= 0, got -1.0"),
    ("grpo.kl_kind=kl", "grpo.kl_kind: expected one of 'k1', 'k2', 'k3', got 'kl'"),
    ("grpo.k3_max=-1", "grpo.k3_max: expected null or a number > 0, got -1.0"),
    ("grpo.aggregation=sum", "grpo.aggregation: expected one of 'token-mean', "),
    ("grpo.horizon=-5", "grpo.horizon: expected null or an int >= 1, got -5"),
    # optim
    ("optim.actor_lr=0", "optim.actor_lr: expected a number > 0, got 0.0"),
    ("optim.critic_lr=-1e-5", "optim.critic_lr: expected a number > 0, got -1e-05"),
    ("optim.betas=[0.9, 1.0]", "optim.betas: expected two numbers in [0, 1), got (0.9, 1.0)"),
    ("optim.betas=[0.9]", "optim.betas: expected a list of 2 numbers, got [0.9]"),
    ("optim.eps=0", "optim.eps: expected a number > 0, got 0.0"),
    ("optim.weight_decay=-0.01", "optim.weight_decay: expected a number >= 0, got -0.01"),
    ("optim.grad_clip=0", "optim.grad_clip: expected null or a number > 0, got 0.0"),
    ("optim.micro_batch_tokens=0", "optim.micro_batch_tokens: expected an int >= 1, got 0"),
    ("optim.shared_prefix=-1", "optim.shared_prefix: expected an int >= 0, got -1"),
    # across sections
    ("algorithm=grpo", "rollout.group_size: expected an int >= 2 with algorithm grpo"),
    ("ppo.minibatches=17", "ppo.minibatches: expected at most the 16 episodes per iteration"),
    (["algorithm=grpo", "rollout.group_size=2", "grpo.minibatches=33"],
     "grpo.minibatches: expected at most the 32 episodes per iteration"),
    ("optim.micro_batch_tokens=512", "optim.micro_batch_tokens: expected at least rollout.context_budget"),
]


@pytest.mark.parametrize(("overrides", "prefix"), RULES, ids=lambda x: str(x)[:60])
def test_validation_rule(overrides: str | list[str], prefix: str) -> None:
    items = [overrides] if isinstance(overrides, str) else overrides
    message = error(items)
    assert message.startswith(prefix), message
    field_path = prefix.split(":")[0]
    assert message.startswith(field_path + ": ")


def test_every_field_has_a_rule_or_cannot_be_wrong() -> None:
    """Each field of each section is exercised by RULES (env.options is checked by the environment)."""
    tested = {(r if isinstance(r, str) else r[-1]).split(":")[0] for _, r in RULES}
    for section, path in ((RunSection, "run"), (ModelSection, "model"), (EnvSection, "env"),
                          (RolloutSection, "rollout"), (CompactionSection, "rollout.compaction"),
                          (VLLMSection, "rollout.vllm"),
                          (PPOSection, "ppo"), (GRPOSection, "grpo"), (OptimSection, "optim")):
        for f in dataclasses.fields(section):
            if f.name not in ("compaction", "vllm"):
                assert f"{path}.{f.name}" in tested, f"{path}.{f.name} has no validation case"


def test_sections_built_directly_name_their_dotted_field() -> None:
    with pytest.raises(ValueError, match=re.escape("ppo.clip_high: expected a number >= 0, got -1.0")):
        PPOSection(clip_high=-1.0)
    with pytest.raises(ValueError, match=r"^rollout\.compaction\.strategy: "):
        CompactionSection(strategy="bad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^ppo: expected a mapping, got 3$"):
        TrainConfig(ppo=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^unknown key 'optim\.lr' \(known: "):
        TrainConfig(optim={"lr": 1.0})  # type: ignore[arg-type]
    assert TrainConfig(ppo={"gamma": 0.5}).ppo.gamma == 0.5  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ppo.gamma = 0.5  # type: ignore[misc]


def test_config_error_is_a_value_error_and_one_line() -> None:
    assert issubclass(ConfigError, ValueError)
    assert str(ConfigError("a:\n  b\n c")) == "a: b c"


# ---- derived values and the runner ---------------------------------------------------------------------


def test_derived_values() -> None:
    cfg = TrainConfig()
    assert cfg.run_dir == Path("runs") / "run" == cfg.run.dir
    assert cfg.needs_critic and not cfg.needs_reference  # PPO's KL is off by default
    assert cfg.horizon == cfg.rollout.context_budget
    grpo = load_config(None, ["algorithm=grpo", "rollout.group_size=4", "grpo.horizon=64"])
    assert not grpo.needs_critic and grpo.needs_reference  # GRPO's k3 KL, beta 0.04
    assert (grpo.grpo.kl_beta, grpo.grpo.kl_kind) == (0.04, "k3")
    assert grpo.horizon == 64 and grpo.rollout.episodes_per_iteration == 64
    assert not load_config(None, ["algorithm=grpo", "rollout.group_size=2", "grpo.kl_beta=0"]).needs_reference
    assert load_config(None, ["ppo.kl_beta=0.01"]).needs_reference


def test_to_runner_config_fields_match() -> None:
    from agentrl.compaction import SUMMARY_REQUEST, CompactionConfig
    from agentrl.runner import RunnerConfig

    overrides = ["rollout.temperature=0.7", "rollout.top_p=0.9", "rollout.tool_error_penalty=0.05"]
    cfg = load_config(ROOT / "examples" / "ppo_graph_nav.yaml", overrides)
    rc = cfg.to_runner_config()
    assert isinstance(rc, RunnerConfig) and rc == cfg.rollout.to_runner_config()
    for f in dataclasses.fields(RunnerConfig):
        if f.name != "compaction":
            assert getattr(rc, f.name) == getattr(cfg.rollout, f.name), f.name
    c = cfg.rollout.compaction
    expected = CompactionConfig(c.strategy, c.keep_last_turns, c.max_summary_tokens, SUMMARY_REQUEST)
    assert rc.compaction == expected
    custom = load_config(None, ["rollout.compaction.summary_request=Summarise."]).to_runner_config()
    assert custom.compaction.summary_request == "Summarise."


def test_defaults_and_fields_mirror_the_runner() -> None:
    from agentrl.compaction import CompactionConfig
    from agentrl.runner import RunnerConfig

    runner = RunnerConfig()
    section = RolloutSection()
    names = [f.name for f in dataclasses.fields(RunnerConfig)]
    assert set(names) <= {f.name for f in dataclasses.fields(RolloutSection)}
    for name in names:
        if name != "compaction":
            assert getattr(section, name) == getattr(runner, name), name
    assert section.compaction.to_compaction_config() == CompactionConfig()


def test_choices_mirror_the_math_and_model_modules() -> None:
    from agentrl.advantages import EPISODE_GAE_MODES, TRUNCATION_MODES
    from agentrl.compaction import STRATEGIES
    from agentrl.losses import AGGREGATION_MODES, KL_KINDS
    from agentrl.models import SIZES

    assert get_args(Aggregation) == AGGREGATION_MODES
    assert get_args(KLKind) == KL_KINDS
    assert get_args(Truncation) == TRUNCATION_MODES
    assert get_args(GAEMode) == EPISODE_GAE_MODES
    assert get_args(Strategy) == STRATEGIES
    assert set(get_args(ModelSize)) == set(SIZES)


def test_math_field_names_are_the_math_keyword_arguments() -> None:
    from agentrl import advantages, group_advantages, losses

    def kwargs(fn: object) -> set[str]:
        return set(inspect.signature(fn).parameters)  # type: ignore[arg-type]

    assert {"clip_low", "clip_high", "dual_clip"} <= kwargs(losses.policy_loss)
    assert {"gamma", "truncation"} <= kwargs(advantages.episode_gae)
    assert {"alpha"} <= kwargs(advantages.length_adaptive_lambda)
    assert {"eps", "scale_by_std"} <= kwargs(group_advantages.grpo_advantages)
    assert {"k3_max"} <= kwargs(losses.kl) and {"horizon"} <= kwargs(losses.aggregate)
    ppo = {f.name for f in dataclasses.fields(PPOSection)}
    grpo = {f.name for f in dataclasses.fields(GRPOSection)}
    assert {"gamma", "truncation", "alpha", "clip_low", "clip_high", "dual_clip", "k3_max", "horizon"} <= ppo
    assert {"eps", "scale_by_std", "clip_low", "clip_high", "dual_clip", "k3_max", "horizon"} <= grpo


# ---- docs and imports ----------------------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS, ids=lambda c: c.__name__)
def test_every_field_is_described_in_attributes(section: type) -> None:
    doc = inspect.getdoc(section) or ""
    assert "Attributes:" in doc
    attributes = doc.split("Attributes:", 1)[1]
    described = re.findall(r"^    (\w+): \S", attributes, flags=re.M)
    assert described == [f.name for f in dataclasses.fields(section)]


def test_config_imports_no_torch() -> None:
    code = (
        "import sys; from agentrl.config import load_config; "
        "c = load_config('examples/ppo_graph_nav.yaml', ['algorithm=grpo', 'rollout.group_size=4']); "
        "c.to_runner_config(); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]; "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_a_new_env_name_drops_the_options_of_the_old_one() -> None:
    graph_nav = ROOT / "examples" / "ppo_graph_nav.yaml"
    assert load_config(graph_nav).env.options  # size and the rest, for graph_nav
    other = load_config(graph_nav, ["env.name=arithmetic"])
    assert other.env.name == "arithmetic" and other.env.options == {}
    kept = load_config(graph_nav, ["env.name=arithmetic", "env.options.max_value=3"])
    assert kept.env.options == {"max_value": 3}
    same = load_config(graph_nav, ["env.name=graph_nav"])  # the same env keeps its options
    assert same.env.options == load_config(graph_nav).env.options
