"""``agentrl compare``: PPO against GRPO (and variants) from one starting model, the same seeds and the
same budget of environment steps, evaluated on held-out tasks, with a report.

    agentrl compare --env arithmetic --algos ppo,grpo --seeds 3 --budget 2048 \\
        [--model DIR] [--config-dir DIR | --config ppo.yaml --config grpo.yaml] [--env-option k=v ...] \\
        [--set key=value ...] \\
        [--variant seq_mean:ppo.aggregation=seq-mean-token-mean] [--eval-episodes 64] [--out DIR]

What it does:

1. **Arms.** One per algorithm, from its ``--config`` file (one per algorithm, whatever its name) or
   ``<config-dir>/<algo>_<env>.yaml`` (default: the example configs installed with the package). With
   ``--config`` files, ``--env`` replaces the configs' environment and its options (a graph_nav
   ``size`` is no option of another environment); without, ``--env`` names a setting (``ledger_long``
   is ``ledger`` with 48 records) and the configs' environment stays. Then each ``--env-option`` and
   every ``--set`` is applied, plus one per
   variant and algorithm it applies to: ``--variant NAME:key=value[,key=value]`` adds the
   arm ``<algo>+NAME`` with those overrides on top. A variant applies to an algorithm when one of its
   keys is under that algorithm's section (``ppo.aggregation=...`` makes only ``ppo+NAME``), or when
   none of its keys is under any algorithm's section (``rollout.compaction.strategy=none`` makes one
   arm per algorithm).
2. **The same start, seeds and budget.** Every run starts from one model: ``--model``, the configs'
   common ``model.path``, or the default tiny model written once into ``OUT/initial_model``. Seed k of
   every arm sets ``run.seed = k`` (task seeds, sampling, mini-batch order). Every run gets
   ``run.max_env_steps = budget`` and enough ``run.iterations`` for the budget to stop it (an episode
   takes at least one step). All configs are built and checked before anything trains.
3. **Train** each arm x seed with ``agentrl.train.train`` into ``OUT/<arm>/seed_<k>/`` (a normal run
   directory; the peak-memory counter is reset before each run), one after the other in this process.
4. **Evaluate** the final checkpoint's policy on ``--eval-episodes`` held-out tasks, environment seeds
   ``10**9 + i`` (training draws ``run.seed * 10**6 + ...``, checked to stay below), with the run's own
   rollout settings (temperature included) and one sampling seed for all runs; written to
   ``OUT/<arm>/seed_<k>/eval.json``.
5. **Report**: ``OUT/report.md`` and two PNG plots (``agentrl.report``; every number from the runs'
   files, the definitions written in the report).

Run again with the same arguments, a compare reuses the runs that have their ``eval.json`` and resumes
the ones that stopped after a checkpoint; a run directory whose ``config.yaml`` differs is an error.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from agentrl import api
from agentrl.config import TrainConfig, load_config
from agentrl.report import EVAL_FILE, write_report

ALGORITHMS = ("ppo", "grpo")
INITIAL_MODEL_DIR = "initial_model"
HELDOUT_FIRST_SEED = 10**9
EVAL_SAMPLING_SEED = 0
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ITEM_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")  # commas that start the next key=value


@dataclass(frozen=True)
class Variant:
    """``NAME:key=value[,key=value]``: extra ``--set`` overrides, an arm ``<algo>+NAME``."""

    name: str
    overrides: tuple[str, ...]

    def applies_to(self, algorithm: str) -> bool:
        """Whether the variant makes an arm of ``algorithm`` (module docstring, point 1)."""
        sections = {item.split("=", 1)[0].strip().split(".")[0] for item in self.overrides}
        return algorithm in sections or not sections & set(ALGORITHMS)


@dataclass(frozen=True)
class Arm:
    """One line of the comparison: an algorithm and the variant's overrides (none for the plain arm)."""

    name: str
    algorithm: str
    overrides: tuple[str, ...] = ()


def parse_variant(text: str) -> Variant:
    """``NAME:key=value[,key=value]`` as a ``Variant``; a value may hold commas (``optim.betas=[0.9,0.95]``:
    a comma splits only where a ``key=`` follows)."""
    name, sep, rest = text.partition(":")
    items = tuple(s.strip() for s in _ITEM_SPLIT.split(rest)) if rest.strip() else ()
    if not sep or not _NAME_RE.fullmatch(name) or not items or not all("=" in s for s in items):
        raise ValueError(f"--variant: expected NAME:key=value[,key=value] "
                         f"(seq_mean:ppo.aggregation=seq-mean-token-mean), got {text!r}")
    return Variant(name, items)


def arms_for(algos: Sequence[str], variants: Sequence[Variant]) -> list[Arm]:
    """The plain arm of each algorithm, then each variant's arms, in that order."""
    for algo in algos:
        if algo not in ALGORITHMS:
            raise ValueError(f"--algos: unknown algorithm {algo!r} (known: {', '.join(ALGORITHMS)})")
    if not algos or len(set(algos)) != len(algos):
        raise ValueError(f"--algos: expected distinct algorithms from {', '.join(ALGORITHMS)}, "
                         f"got {list(algos)}")
    arms = [Arm(algo, algo) for algo in algos]
    for v in variants:
        made = [Arm(f"{algo}+{v.name}", algo, v.overrides) for algo in algos if v.applies_to(algo)]
        if not made:
            raise ValueError(f"--variant {v.name}: its keys are for none of the algorithms "
                             f"{', '.join(algos)}")
        arms += made
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"--variant: two variants share a name ({', '.join(names)})")
    return arms


# ---- configs --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Every run of a compare, its config built and checked."""

    out: Path
    arms: list[Arm]
    seeds: int
    budget: int
    model_path: Path
    write_default_model: bool
    runs: dict[str, list[tuple[int, TrainConfig]]]  # arm name -> [(seed, config)]
    files: dict[str, Path]  # algorithm -> the config file its arms start from


def config_path(config_dir: str | Path | None, algo: str, env: str) -> Path:
    """``<config-dir>/<algo>_<env>.yaml``; without a directory, the example configs installed with the
    package (``agentrl.examples``: in a clone, its ``examples/``)."""
    if config_dir is None:
        config_dir = Path(str(resources.files("agentrl.examples")))
    return Path(config_dir) / f"{algo}_{env}.yaml"


def base_files(env: str | None, algos: Sequence[str] | None, config_dir: str | Path | None,
               configs: Sequence[str | Path]) -> dict[str, Path]:
    """The config each algorithm's arms start from: the ``configs`` given (each file's ``algorithm``
    says whose it is), else ``config_path`` of each of ``algos`` for ``env``."""
    if algos is not None:
        arms_for(algos, [])  # an unknown or repeated algorithm, named before any file is looked for
    if configs:
        files: dict[str, Path] = {}
        for path in map(Path, configs):
            algo = load_config(path).algorithm
            if algo in files:
                raise ValueError(f"--config: {files[algo]} and {path} are both {algo} configs")
            files[algo] = path
        if algos is not None and set(algos) != set(files):
            raise ValueError(f"--algos: {','.join(algos)}, but the --config files are for {','.join(files)}")
        return {algo: files[algo] for algo in (algos or files)}
    if env is None:
        raise ValueError("--env: required without --config")
    files = {algo: config_path(config_dir, algo, _file_name(env)) for algo in (algos or ALGORITHMS)}
    for algo, path in files.items():
        if not path.is_file():
            raise ValueError(f"--config-dir: no {path} (the {algo} config for --env {env}); write one and "
                             "give it with --config FILE (one per algorithm; docs/tutorial.md)")
    return files


def _file_name(env: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", env)


def env_overrides(env: str | None, env_options: Sequence[str]) -> list[str]:
    """``--env`` and ``--env-option`` as ``--set`` items: a new ``env.name`` drops the options the config
    gave its own environment (``agentrl.config.load_config``), then each option is set."""
    items = [f"env.name={env}"] if env is not None else []
    for option in env_options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--env-option: expected key=value, got {option!r}")
        items.append(f"env.options.{key.strip()}={value}")
    return items


def _base_config(path: Path, overrides: Sequence[str]) -> TrainConfig:
    return load_config(path, overrides)


def _start_model(bases: Sequence[TrainConfig], model: str | Path | None, out: Path) -> tuple[Path, bool]:
    """The one model every run starts from, and whether it is the default model still to be written."""
    if model is not None:
        if not (Path(model) / "config.json").is_file():
            raise ValueError(f"--model: {model} is not a model directory (no config.json)")
        return Path(model), False
    paths = {cfg.model.path for cfg in bases}
    if len(paths) > 1:
        raise ValueError(f"--model: the configs start from different models ({sorted(map(str, paths))}); "
                         "give one with --model")
    (path,) = paths
    return (Path(path), False) if path is not None else (out / INITIAL_MODEL_DIR, True)


def plan(env: str | None, *, algos: Sequence[str] | None, seeds: int, budget: int, out: Path,
         model: str | Path | None, config_dir: str | Path | None, overrides: Sequence[str],
         variants: Sequence[Variant], configs: Sequence[str | Path] = (),
         env_options: Sequence[str] = ()) -> Plan:
    """Build and check every run's config (a bad value fails here, before any training). ``--env`` and
    ``--env-option`` come before the ``--set`` overrides."""
    if seeds < 1:
        raise ValueError(f"--seeds: expected an int >= 1, got {seeds}")
    if budget < 1:
        raise ValueError(f"--budget: expected an int >= 1 (environment steps), got {budget}")
    files = base_files(env, algos, config_dir, configs)
    arms = arms_for(list(files), variants)
    # without --config, --env named the files, whose environment is the setting's (ledger_long: ledger)
    overrides = [*env_overrides(env if configs else None, env_options), *overrides]
    bases = [_base_config(path, overrides) for path in files.values()]
    model_path, write_default = _start_model(bases, model, out)
    runs: dict[str, list[tuple[int, TrainConfig]]] = {}
    for arm in arms:
        runs[arm.name] = []
        for seed in range(seeds):
            cfg = _run_config(files[arm.algorithm], arm, seed, overrides, budget, model_path, out)
            _check_heldout_disjoint(cfg)
            runs[arm.name].append((seed, cfg))
    return Plan(out, arms, seeds, budget, model_path, write_default, runs, files)


def _run_config(path: Path, arm: Arm, seed: int, overrides: Sequence[str], budget: int,
                model_path: Path, out: Path) -> TrainConfig:
    try:
        base = _base_config(path, [*overrides, *arm.overrides])
        fixed = [
            f"run.name={re.sub(r'[^A-Za-z0-9_.-]', '_', arm.name)}_seed_{seed}",
            f"run.seed={seed}",
            f"run.max_env_steps={budget}",
            # each episode takes >= 1 step, so the budget ends the run by this iteration
            f"run.iterations={math.ceil(budget / base.rollout.episodes_per_iteration)}",
            f"run.run_dir={out / arm.name / f'seed_{seed}'}",
            f"model.path={model_path}",
        ]
        return _base_config(path, [*overrides, *arm.overrides, *fixed])
    except ValueError as err:
        raise ValueError(f"arm {arm.name}: {err}") from None


def _check_heldout_disjoint(cfg: TrainConfig) -> None:
    last = cfg.run.seed * 1_000_000 + (cfg.run.iterations + 1) * cfg.rollout.tasks_per_iteration
    if last >= HELDOUT_FIRST_SEED:
        raise ValueError(f"--seeds: training task seeds of seed {cfg.run.seed} reach the held-out seeds "
                         f"{HELDOUT_FIRST_SEED}..; use fewer seeds or a smaller budget")


# ---- training and evaluation ----------------------------------------------------------------------------


def evaluate(cfg: TrainConfig, policy_dir: Path, episodes: int) -> dict[str, Any]:
    """The policy in ``policy_dir`` on ``episodes`` held-out tasks (seeds ``10**9 + i``) with ``cfg``'s
    rollout settings; returns the numbers written to ``eval.json``."""
    from agentrl.backends import make_sampler
    from agentrl.batching import make_runner
    from agentrl.chat import ChatFormat
    from agentrl.registry import make
    from agentrl.runner import Task
    from agentrl.train import device_for, load_policy

    policy, tokenizer = load_policy(policy_dir, cfg, device_for(cfg.model.device))
    sampler = make_sampler(cfg.rollout.backend, policy, policy_dir, vllm=cfg.rollout.vllm, seed=cfg.run.seed)
    runner = make_runner(cfg, sampler, policy, ChatFormat(tokenizer), episodes=episodes)  # rollout.batching
    tasks = [Task(seed=HELDOUT_FIRST_SEED + i, group_id=f"heldout:{i}") for i in range(episodes)]
    result = runner.run(lambda: make(cfg.env.name, **cfg.env.options), tasks, seed=EVAL_SAMPLING_SEED)
    m = result.metrics
    return {
        "episodes": int(m["episodes"]), "failed_tasks": int(m["failed_tasks"]),
        "success_rate": m["success_rate"], "reward_mean": m["mean_reward"], "turns_mean": m["mean_turns"],
        "task_seeds": [HELDOUT_FIRST_SEED, HELDOUT_FIRST_SEED + episodes - 1],
        "sampling_seed": EVAL_SAMPLING_SEED, "policy": str(policy_dir),
    }


def train_and_evaluate(cfg: TrainConfig, eval_episodes: int, *, progress: bool) -> dict[str, Any]:
    """Train (or reuse, or resume) the run of ``cfg``, then evaluate it; returns its ``eval.json``."""
    from agentrl.checkpoint import latest_checkpoint
    from agentrl.metrics import reset_peak_memory
    from agentrl.train import CONFIG_FILE, device_for, train

    run_dir = cfg.run_dir
    if (run_dir / CONFIG_FILE).is_file() and load_config(run_dir / CONFIG_FILE) != cfg:
        raise ValueError(f"{run_dir}: holds a run of another config; use another --out or remove it")
    if (run_dir / EVAL_FILE).is_file():
        return json.loads((run_dir / EVAL_FILE).read_text())
    resume = latest_checkpoint(run_dir) is not None
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise ValueError(f"{run_dir}: an unfinished run with no checkpoint; remove it to start over")
    reset_peak_memory(device_for(cfg.model.device))
    train(cfg, resume=resume, progress=progress)
    final = latest_checkpoint(run_dir)
    assert final is not None  # train always checkpoints its last iteration
    result = evaluate(cfg, final / "policy", eval_episodes)
    (run_dir / EVAL_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---- the whole comparison -------------------------------------------------------------------------------


def compare(
    env: str | None = None,
    *,
    algos: Sequence[str] | None = None,
    seeds: int = 3,
    budget: int = 1024,
    out: str | Path | None = None,
    model: str | Path | None = None,
    config_dir: str | Path | None = None,
    configs: Sequence[str | Path] = (),
    env_options: Sequence[str] = (),
    overrides: Sequence[str] = (),
    variants: Sequence[str] = (),
    eval_episodes: int = 64,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train every arm x seed with one budget of environment steps, evaluate each on held-out tasks, and
    write ``report.md`` and its plots into ``out`` (default ``runs/compare_<env>``); returns the
    report's path. Bad input raises a one-line ``ValueError`` before anything trains.

    The arms start from ``configs`` (one YAML file per algorithm) or, without them, from
    ``<config_dir>/<algo>_<env>.yaml`` for each of ``algos`` (default ppo and grpo; ``config_dir``
    default: the installed example configs). With ``configs``, ``env`` (a registered name or
    ``module:attr``) replaces their environment, and its options with it; without, it names the files
    and their environment stays. ``env_options`` (``key=value``) are the environment's options."""
    if eval_episodes < 1:
        raise ValueError(f"--eval-episodes: expected an int >= 1, got {eval_episodes}")
    parsed = [parse_variant(v) for v in variants]
    if out is None:
        named = env if env is not None else load_config(Path(configs[0])).env.name if configs else "run"
        out = Path("runs") / f"compare_{_file_name(named)}"
    out = Path(out)
    p = plan(env, algos=algos, seeds=seeds, budget=budget, out=out, model=model, config_dir=config_dir,
             overrides=overrides, variants=parsed, configs=configs, env_options=env_options)
    say = log or (lambda _: None)
    if p.write_default_model and not (p.model_path / "config.json").is_file():
        from agentrl.models import init_model

        first = next(iter(p.runs.values()))[0][1]
        init_model(p.model_path, size=first.model.init_size, seed=0)
        say(f"wrote the starting model to {p.model_path}")
    total, n = sum(len(r) for r in p.runs.values()), 0
    for arm, runs in p.runs.items():
        for seed, cfg in runs:
            n += 1
            start = time.perf_counter()
            say(f"[{n}/{total}] {arm} seed {seed}: training, then {eval_episodes} held-out episodes "
                f"({cfg.run_dir})")
            result = train_and_evaluate(cfg, eval_episodes, progress=progress)
            say(f"[{n}/{total}] {arm} seed {seed}: held-out success {result['success_rate']:.3f} "
                f"({time.perf_counter() - start:.1f}s, {cfg.run_dir})")
    # the files found for --env are named by their directory, so --env keeps meaning the setting
    command = command_line(env, algos=list(p.files), seeds=seeds, budget=budget, out=out, model=model,
                           configs=list(p.files.values()) if configs else [], env_options=env_options,
                           overrides=overrides, variants=variants, eval_episodes=eval_episodes,
                           config_dir=None if configs else next(iter(p.files.values())).parent)
    first = next(iter(p.runs.values()))[0][1]
    return write_report(out, {arm: [(s, c.run_dir) for s, c in rs] for arm, rs in p.runs.items()},
                        budget=budget, intro=_intro(first.env.name, p, eval_episodes),
                        commands=_commands(command, p))


# Environment variables that change what a run computes or how fast: the reproduce commands set them.
REPRODUCE_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED",
                 "PYTHONPATH", "TOKENIZERS_PARALLELISM")


def env_prefix(environ: Mapping[str, str] | None = None) -> list[str]:
    """``NAME=value`` (the value shell-quoted) for each of ``REPRODUCE_ENV`` set in ``environ`` (default:
    this process's)."""
    environ = os.environ if environ is None else environ
    return [f"{name}={shlex.quote(environ[name])}" for name in REPRODUCE_ENV if name in environ]


def command_line(env: str | None, *, algos: Sequence[str], seeds: int, budget: int, out: Path,
                 model: str | Path | None, configs: Sequence[str | Path], env_options: Sequence[str],
                 overrides: Sequence[str], variants: Sequence[str], eval_episodes: int,
                 config_dir: Path | None = None) -> str:
    """The ``agentrl compare`` command of these arguments, after the environment variables it ran with
    (``env_prefix``); the config files (or the directory ``--env`` found them in) are named, so it runs
    the same from any directory."""
    args = ["agentrl", "compare", *(["--env", env] if env is not None else []), "--algos", ",".join(algos),
            "--seeds", str(seeds), "--budget", str(budget), "--eval-episodes", str(eval_episodes)]
    if config_dir is not None:
        args += ["--config-dir", str(config_dir)]
    for path in configs:
        args += ["--config", str(path)]
    for option in env_options:
        args += ["--env-option", option]
    if model is not None:
        args += ["--model", str(model)]
    for item in overrides:
        args += ["--set", item]
    for v in variants:
        args += ["--variant", v]
    return " ".join([*env_prefix(), shlex.join([*args, "--out", str(out)])])


def _intro(env: str, p: Plan, eval_episodes: int) -> str:
    from agentrl.train import device_for

    first = next(iter(p.runs.values()))[0][1]
    arms = ", ".join(f"`{a.name}`" + (f" ({', '.join(f'`{o}`' for o in a.overrides)})" if a.overrides else "")
                     for a in p.arms)
    return "\n".join([
        f"# agentrl compare: {env}", "",
        f"Arms {arms}; {p.seeds} seed(s) each (`run.seed` 0..{p.seeds - 1}), every run from the same "
        f"model (`{p.model_path}`) with a budget of {p.budget} environment steps "
        f"(`run.max_env_steps`), then its final policy evaluated on {eval_episodes} held-out tasks "
        f"(environment seeds {HELDOUT_FIRST_SEED}..{HELDOUT_FIRST_SEED + eval_episodes - 1}, the training "
        f"rollout settings, sampling seed {EVAL_SAMPLING_SEED}). Device: "
        f"{device_for(first.model.device)}. Each run's directory is `{p.out}/<arm>/seed_<k>/`.",
    ])


def _commands(command: str, p: Plan) -> list[str]:
    arm, runs = next(iter(p.runs.items()))
    seed, cfg = runs[0]
    return [
        "# the whole comparison (finished runs in --out are reused)",
        command,
        "# one run again from its resolved config, e.g.",
        " ".join([*env_prefix(), shlex.join(["agentrl", "train", "--config", str(cfg.run_dir / "config.yaml"),
                                             "--run-dir", f"runs/{arm}_seed_{seed}_again"])]),
    ]


# ``agentrl.compare(...)`` calls ``agentrl.api.compare``: the module is the API's name too (agentrl/api.py).
api.callable_module(__name__, api.compare)
