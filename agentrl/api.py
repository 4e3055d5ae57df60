"""The Python API: train, compare and evaluate from a script, the same code paths as the commands.

    import agentrl

    cfg = agentrl.load_config("examples/ppo_arithmetic.yaml", ["run.iterations=2"])
    run_dir = agentrl.train(cfg)
    print(agentrl.evaluate(run_dir, episodes=16))
    report = agentrl.compare(configs=["my/ppo.yaml", "my/grpo.yaml"], seeds=3, budget=2048)

``agentrl`` exports these names lazily, so ``import agentrl`` loads no torch until one is used. docs/api.md
has a runnable example.

``agentrl.train`` and ``agentrl.compare`` are also the names of the modules that hold the training loop
and the comparison. Importing a submodule binds its name on the package, so a plain function of that
name would be replaced by the module as soon as anything imported it. Instead those two modules are
callable (``callable_module``): calling ``agentrl.train(...)`` calls ``agentrl.api.train`` whichever
way the name was reached, and ``agentrl.train.build`` is still the module's function.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentrl.config import TrainConfig
from agentrl.config import load_config as _load_config


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config in the YAML file ``path`` (None: every default) with ``overrides`` (``"ppo.gamma=0.99"``,
    as ``--set`` takes them) applied, checked; a bad value raises a one-line ``ValueError`` naming it."""
    return _load_config(path, overrides)


def train(config: TrainConfig | str | Path, *, overrides: Sequence[str] = (), resume: bool = False,
          progress: bool = True) -> Path:
    """Train with ``config`` (a ``TrainConfig`` or a YAML file, with ``overrides`` on top), as
    ``agentrl train`` does; ``resume`` continues the run in ``config.run_dir`` from its latest checkpoint.
    Returns the run directory."""
    from agentrl.train import train as _train

    cfg = config if isinstance(config, TrainConfig) else _load_config(config, overrides)
    if isinstance(config, TrainConfig) and overrides:
        raise ValueError("overrides: give them with a config file, or build the TrainConfig with them")
    return _train(cfg, resume=resume, progress=progress)


def evaluate(run_dir: str | Path, *, episodes: int = 64, checkpoint: str | Path | None = None
             ) -> dict[str, Any]:
    """The success of a run's policy on ``episodes`` held-out tasks (environment seeds ``10**9 + i``,
    never drawn in training), with the run's own rollout settings, as ``agentrl compare`` evaluates each
    run. ``checkpoint`` (default: the latest) is a checkpoint directory of the run. Returns
    ``success_rate``, ``reward_mean``, ``turns_mean``, ``episodes``, ``failed_tasks`` and the seeds."""
    from agentrl.checkpoint import latest_checkpoint
    from agentrl.compare import evaluate as _evaluate
    from agentrl.train import CONFIG_FILE

    run = Path(run_dir)
    if episodes < 1:
        raise ValueError(f"episodes: expected an int >= 1, got {episodes}")
    if not (run / CONFIG_FILE).is_file():
        raise ValueError(f"run_dir: {run} holds no run (no {CONFIG_FILE})")
    point = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run)
    if point is None:
        raise ValueError(f"run_dir: {run} has no checkpoint yet")
    return _evaluate(_load_config(run / CONFIG_FILE), point / "policy", episodes)


def compare(env: str | None = None, **kwargs: Any) -> Path:
    """PPO against GRPO (and variants) on one budget, evaluated on held-out tasks, with a report, as
    ``agentrl compare`` does; the keywords are ``agentrl.compare.compare``'s (``configs``, ``seeds``,
    ``budget``, ``out``, ``overrides``, ``variants``, ...). Returns the path of ``report.md``."""
    from agentrl.compare import compare as _compare

    return _compare(env, **kwargs)


class _CallableModule(types.ModuleType):
    """A module that can be called: ``agentrl.train(cfg)`` (module docstring)."""

    __api__: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return type(self).__api__(*args, **kwargs)


def callable_module(module_name: str, function: Callable[..., Any]) -> None:
    """Make the module ``module_name`` callable as ``function`` (module docstring)."""
    module = sys.modules[module_name]
    module.__class__ = type(f"{module_name}:callable", (_CallableModule,),
                            {"__api__": staticmethod(function), "__doc__": module.__doc__})
