"""A multi-turn, tool-using GRPO step of agentrl against one of TRL's ``GRPOTrainer`` with tools, on the CPU.

    pip install -e '.[bench]'          # TRL is a benchmark-only extra, never a core dependency
    python benchmarks/grpo_vs_trl_multiturn.py [--steps 2] [--rounds 4] [--profile] [--model DIR]

The task: graph_nav ``size=small, numbered=true`` (find a key, unlock a door, walk out; the tools are
``inventory``, ``look``, ``move``, ``take`` and ``unlock``). The model: the default tiny Qwen2 model,
warm-started here by behaviour cloning of the environment's expert (``agentrl.sft``: 128 demonstrations,
12 epochs; about two CPU minutes, or ``--model DIR`` to reuse one the script saved with ``--save-model``),
so that it writes well-formed tool calls and episodes run their turns (an untrained model answers in
text and every episode ends after one action, on both sides). The same on both sides:

- the same model directory and tokenizer;
- the same prompts, token for token (the script checks): the environment's system prompt with the tool
  schemas, then the task of seed s, rendered by the model's chat template;
- 4 tasks x 8 episodes per step, temperature 1, at most 4 actions per episode of at most 48 tokens each;
- the tools are the environment's own: TRL's ``environment_factory`` gets a class whose methods forward
  each call to a graph_nav instance (reset with the task's seed), so a tool result is the same text;
  the reward is the environment's (TRL's ``get_reward``);
- beta 0.04 with the k3 estimator to the frozen initial model, clip 0.2 / 0.28, token-mean loss over
  the actions' tokens (tool results are context on both sides), one optimiser update per step, AdamW at
  the same constant learning rate, gradient norm clipped to 1; no activation checkpointing.

What TRL does differently, and how the script makes the work the same:

- TRL ends an episode when an action has no tool call it can parse; agentrl's environments answer a
  malformed call with an error message and go on. The agentrl side here ends an episode at such an
  action, as TRL does (``TRLLikeNav``), so both play the same number of actions for the same outputs.
- TRL has no notion of an environment ending the episode: after the way out is found it keeps sampling
  until the model stops calling tools. Its tools here then answer "The episode has ended." (the agentrl
  side stops there).
- Turns: agentrl's ``max_turns: 4`` runs the fourth action's tools and stops; TRL's
  ``max_tool_calling_iterations: 3`` samples a fourth action and stops without running its tools. Both
  sample at most 4 actions; TRL runs at most one tool call less per episode.
- Token limits: agentrl caps each action (``max_response_tokens: 48``); TRL caps the whole completion
  (actions and tool results, ``max_completion_length``) and each generation (``max_new_tokens``):
  48 per generation here, and a completion limit of 1024 that four actions and their results never
  reach.
- TRL renders tool schemas from the methods' signatures and docstrings (transformers'
  ``get_json_schema``); agentrl writes its own (``additionalProperties: false`` included). The script
  gives transformers' schema builder agentrl's schema for these methods, so the prompts are identical;
  and both sides list the tools in the same (alphabetical: TRL's) order.
- TRL's tokenizer needs a response template to parse tool calls out of an action; the model's chat
  template is not one it knows, so the script sets TRL's own Qwen3 template, which reads the same
  ``<tool_call>`` format.

What each side does with that work is its own: TRL generates each turn with transformers' ``generate``
on the whole conversation so far (the prompt and every earlier turn encoded again), agentrl keeps each
session's KV cache across turns and encodes only the new observation. The ratio measures that too.

Timing, blocks and the spread are those of ``benchmarks/grpo_vs_trl.py`` (its helpers): thread CPU time
by default, alternating blocks, the ratio round by round and step by step, and ``--profile`` for the
phases of a step (agentrl's rollout includes the tools, as TRL's ``generate`` does).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from agentrl.envs.graph_nav import GraphNav
from grpo_vs_trl import AgentrlSide, TRLSide, alternate, parser, report, set_clock

from agentrl import sft
from agentrl.chat import ChatFormat
from agentrl.compaction import CompactionConfig
from agentrl.config import load_config
from agentrl.env import StepResult
from agentrl.models import init_model, load_model
from agentrl.registry import make
from agentrl.runner import RunnerConfig
from agentrl.tools import parse_tool_calls
from agentrl.train import tasks_for

PROMPTS, GENERATIONS, MAX_ACTION, TURNS, BETA, LR = 4, 8, 48, 4, 0.04, 1e-5
ENV = "grpo_vs_trl_multiturn:TRLLikeNav"  # an import path: nothing is added to the registry
ENV_OPTIONS = {"size": "small", "numbered": True}
CONTEXT = 2048


class TRLLikeNav(GraphNav):
    """graph_nav as TRL plays it: the tools in alphabetical order, and an action with a tool call that
    does not parse ends the episode (TRL then sees no tool call)."""

    @property
    def tools(self):  # noqa: ANN201 - GraphNav's tuple of tools
        return tuple(sorted(super().tools, key=lambda t: t.name))

    def step(self, action: str) -> StepResult:
        if parse_tool_calls(action).errors:
            return StepResult((), 0.0, True, False, {"tool_calls": 0, "tool_errors": 0, "final_answer": True})
        return super().step(action)


class NavTools:
    """TRL's environment: one graph_nav per episode, its tools forwarded (``tool_methods`` adds them)."""

    def __init__(self) -> None:
        self.env = TRLLikeNav(**ENV_OPTIONS)
        self.reward, self.ended = 0.0, True

    def reset(self, seed: int, **_: Any) -> None:
        """Start the episode of ``seed``; the prompt already holds its task (None: nothing appended)."""
        self.env.reset(seed=seed)
        self.reward, self.ended = 0.0, False

    def get_reward(self) -> float:
        """The episode's reward: the sum of the environment's step rewards."""
        return self.reward

    def _call(self, name: str, arguments: dict[str, Any]) -> str:
        if self.ended:
            return "The episode has ended."
        call = json.dumps({"name": name, "arguments": arguments})
        result = self.env.step(f"<tool_call>\n{call}\n</tool_call>")
        self.reward += result.reward
        self.ended = result.terminated or result.truncated
        return result.observation[0].content if result.observation else ""


def tool_methods(schemas: list[dict[str, Any]]) -> None:
    """Give ``NavTools`` one method per tool, carrying agentrl's schema for ``get_json_schema``."""
    for schema in schemas:
        name = schema["function"]["name"]

        def method(self: NavTools, _name: str = name, **arguments: Any) -> str:
            return self._call(_name, arguments)

        method.__name__ = method.__qualname__ = name
        method.__doc__ = schema["function"]["description"]
        method.agentrl_schema = schema  # type: ignore[attr-defined]
        setattr(NavTools, name, method)


def use_agentrl_schemas() -> None:
    """transformers' schema builder returns a method's ``agentrl_schema`` when it has one (in the
    chat template's renderer and in the response parser, which types a call's arguments by it)."""
    from transformers.utils import chat_template_utils
    from transformers.utils.chat_parsing import response_parser

    built = chat_template_utils.get_json_schema

    def schema(func: Any) -> dict[str, Any]:
        return getattr(func, "agentrl_schema", None) or built(func)

    for module in (chat_template_utils, response_parser):
        module.get_json_schema = schema


def agentrl_config(model_dir: Path, run_dir: Path, iterations: int) -> Any:
    """The multi-turn GRPO run of the benchmark."""
    sets = {
        "run.iterations": iterations, "run.checkpoint_every": 0, "run.run_dir": str(run_dir),
        "model.path": str(model_dir), "env.name": ENV, "env.options": "{}",
        **{f"env.options.{k}": v for k, v in ENV_OPTIONS.items()},
        "rollout.tasks_per_iteration": PROMPTS, "rollout.group_size": GENERATIONS,
        "rollout.max_response_tokens": MAX_ACTION, "rollout.temperature": 1.0,
        "rollout.context_budget": CONTEXT, "rollout.max_turns": TURNS, "rollout.max_compactions": 0,
        "rollout.max_total_tokens": "null",
        "rollout.max_concurrent": PROMPTS * GENERATIONS, "rollout.compaction.strategy": "none",
        "algorithm": "grpo", "grpo.epochs": 1, "grpo.minibatches": 1, "grpo.kl_beta": BETA,
        "grpo.kl_kind": "k3", "grpo.clip_low": 0.2, "grpo.clip_high": 0.28, "grpo.aggregation": "token-mean",
        "optim.actor_lr": LR, "optim.grad_clip": 1.0, "optim.micro_batch_tokens": 16384,
    }
    root = Path(__file__).resolve().parent.parent
    return load_config(str(root / "examples" / "grpo_graph_nav.yaml"), [f"{k}={v}" for k, v in sets.items()])


def warm_start(out: Path, demos: int = 128, epochs: int = 12) -> Path:
    """The default tiny model after behaviour cloning of ``demos`` expert episodes for ``epochs`` epochs
    (see the module docstring)."""
    model_dir = init_model(out, size="tiny", seed=0)
    model, tokenizer = load_model(model_dir)
    config = RunnerConfig(max_response_tokens=MAX_ACTION, context_budget=CONTEXT, max_turns=TURNS,
                          compaction=CompactionConfig(strategy="none"), max_concurrent=32)
    episodes = sft.demonstrations(ENV, ENV_OPTIONS, sft.demo_seeds(demos), ChatFormat(tokenizer), config)
    sft.finetune(model, episodes, epochs=epochs, lr=3e-3, micro_batch_tokens=8192, seed=0, minibatch_rows=8,
                 pad_id=tokenizer.pad_token_id or 0, lr_schedule="cosine", warmup_steps=5)
    model.save_pretrained(model_dir)
    return model_dir


def trl_rows(side: AgentrlSide, iterations: int) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """TRL's dataset (the conversation and seed of each task, in agentrl's order) and agentrl's prompt
    ids of the same tasks."""
    chat, rows, ids = side.trainer.chat, [], []
    env = make(ENV, **ENV_OPTIONS)
    for it in range(1, iterations + 1):
        for task in tasks_for(side.cfg, it)[::GENERATIONS]:
            text, _ = env.reset(seed=task.seed)
            rows.append({"prompt": [{"role": "system", "content": env.system_prompt},
                                    {"role": "user", "content": text}], "seed": task.seed})
            ids.append(chat.prompt_ids(env.system_prompt, [t.schema() for t in env.tools], text))
    return rows, ids


class TRLTurns:
    """Counts TRL's actions per episode: one generation per row, then one per row that called a tool."""

    def __init__(self, trainer: Any) -> None:
        self.by_step: list[float] = []
        loop = trainer._tool_call_loop

        def counted(prompts: Any, prompt_ids: Any, completion_ids: Any, completions: Any, *a: Any) -> Any:
            out = loop(prompts, prompt_ids, completion_ids, completions, *a)
            episodes = out[1]  # the completions: one assistant message per action, tool messages between
            actions = sum(sum(m["role"] == "assistant" for m in c) for c in episodes)
            self.by_step.append(actions / len(episodes))
            return out

        trainer._tool_call_loop = counted


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(steps=2, rounds=4, warmup=1)
    p.add_argument("--model", type=Path, help="a warm-started model directory (default: build one)")
    p.add_argument("--save-model", type=Path, help="keep the warm-started model here")
    p.add_argument("--demos", type=int, default=128, help="expert episodes of the warm start")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the warm start")
    args = p.parse_args(argv)
    set_clock(p, args)
    total = args.warmup + args.steps * args.rounds
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen3_template

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model or warm_start(args.save_model or work / "model", args.demos, args.epochs)
        ours = AgentrlSide(agentrl_config(model_dir, work / "agentrl_run", total))
        rows, agentrl_ids = trl_rows(ours, total + 1)
        env = make(ENV, **ENV_OPTIONS)
        env.reset(seed=0)
        tool_methods([t.schema() for t in env.tools])
        use_agentrl_schemas()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.response_template = qwen3_template  # TRL's parser of <tool_call> blocks (see above)
        settings = {"max_completion_length": 1024, "max_tool_calling_iterations": TURNS - 1,
                    "generation_kwargs": {"max_new_tokens": MAX_ACTION}}
        theirs = TRLSide(model_dir, work, rows, None, settings=settings, tokenizer=tokenizer,
                         environment_factory=NavTools)
        turns = TRLTurns(theirs.trainer)
        tools = [getattr(NavTools, t.name) for t in env.tools]
        for row, want in zip(rows[:PROMPTS], agentrl_ids, strict=False):
            got = tokenizer.apply_chat_template(row["prompt"], tools=tools, add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
            if list(got) != want:
                raise SystemExit("TRL's prompt ids differ from agentrl's; the comparison would not be fair")
        measured = alternate(ours, theirs, args)
    title = (f"multi-turn GRPO step, graph_nav small, {PROMPTS} tasks x {GENERATIONS} episodes, <= {TURNS} "
             f"actions of <= {MAX_ACTION} tokens, warm-started tiny model")
    report(title, ours, theirs, measured, args, turns=turns.by_step[args.warmup:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
