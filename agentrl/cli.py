"""The ``agentrl`` command line.

Each subcommand is a small function; imports of heavy modules stay inside them so ``agentrl --help``
is instant. A usage error, a bad config or a refused write prints one line naming what was wrong and
exits with code 2 (``agentrl.errors``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_envs(args: argparse.Namespace) -> int:
    from agentrl.registry import list_envs

    entries = list_envs()
    width = max((len(name) for name, _ in entries), default=0)
    for name, description in entries:
        print(f"{name:<{width}}  {description}")
    return 0


def _parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as JSON when it parses (``size=small``, ``num_rooms=40``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--env-option: expected key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _cmd_init_model(args: argparse.Namespace) -> int:
    from agentrl.models import CORPUS_ENVS, build_corpus, init_model
    from agentrl.registry import make

    corpus = None
    if args.env:  # the user's environments join the built-in ones, so their text tokenises as compactly
        options = dict(_parse_option(o) for o in args.env_option)
        for name in args.env:
            make(name, **options)  # an unknown env or option fails here, with its own message
        names = [*CORPUS_ENVS, *(n for n in args.env if n not in CORPUS_ENVS)]
        corpus = build_corpus(names, options={name: options for name in args.env})
    elif args.env_option:
        raise ValueError("--env-option: options are for --env environments; none given")
    out = init_model(args.out, size=args.size, seed=args.seed, vocab_size=args.vocab_size, corpus=corpus)
    info = json.loads((out / "agentrl_model.json").read_text())
    cap = "" if info["vocab_size"] >= args.vocab_size else \
        f" of at most {args.vocab_size}: the corpus ran out of merges first"
    print(f"wrote a {info['size']} model ({info['num_parameters']:,} parameters, vocabulary "
          f"{info['vocab_size']}{cap}) to {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from agentrl.compaction import CompactionConfig
    from agentrl.outputs import check_output_file
    from agentrl.registry import make

    if args.episodes < 1:
        raise ValueError(f"--episodes: expected an int >= 1, got {args.episodes}")
    if args.batching == "continuous" and args.backend != "torch":
        raise ValueError(f"--batching: continuous needs --backend torch, got {args.backend!r}")
    if args.out is None:  # never the current directory, where a second eval would overwrite the first
        args.out = str(Path("runs") / f"eval_{re.sub(r'[^A-Za-z0-9_.-]', '_', args.env)}" / "episodes.jsonl")
    check_output_file(args.out, "--out")  # before the evaluation, whose episodes would be lost
    options = dict(_parse_option(o) for o in args.env_option)
    config = _runner_config(args, CompactionConfig(strategy=args.compaction, keep_last_turns=args.keep_last,
                                                  max_summary_tokens=args.max_summary_tokens))
    try:  # an unknown env or option fails here, before the model loads
        make(args.env, **options)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - an env that cannot be built: one line, not a traceback
        raise ValueError(f"--env: building {args.env!r} raised {type(e).__name__}: {e}") from e

    from agentrl.backends import make_sampler
    from agentrl.batching import continuous_runner
    from agentrl.chat import ChatFormat
    from agentrl.config import VLLMSection
    from agentrl.episodes import save_episodes
    from agentrl.models import load_model
    from agentrl.runner import Runner, Task

    model, tokenizer = load_model(args.model)
    chat = ChatFormat(tokenizer)
    tasks = [Task(seed=args.seed + i, group_id=f"{args.env}:{args.seed + i}") for i in range(args.episodes)]
    vllm = VLLMSection(max_model_len=args.context_budget)
    if args.batching == "continuous":  # the tasks' sessions share slots, one context window each
        runner = continuous_runner(model, chat, config, slots=min(args.max_concurrent, len(tasks)),
                                   field="--batching")
    else:
        sampler = make_sampler(args.backend, model, args.model, vllm=vllm, seed=args.seed)
        runner = Runner(sampler, chat, config)
    result = runner.run(lambda: make(args.env, **options), tasks, seed=args.seed)
    m = result.metrics
    print(f"episodes {int(m['episodes'])}  success {m['success_rate']:.3f}  "
          f"mean reward {m['mean_reward']:.3f}  "
          f"mean turns {m['mean_turns']:.2f}  compactions {m['mean_compactions']:.2f}  "
          f"tool errors {int(m['tool_errors'])}  cut responses {int(m['cut_responses'])}  "
          f"tokens/s {m['sampled_tokens_per_s']:.0f}")
    cuts = {k[len("truncated_"):]: int(v) for k, v in m.items() if k.startswith("truncated_") and v}
    if cuts:
        print("truncated: " + ", ".join(f"{k} {v}" for k, v in sorted(cuts.items())))
    for failure in result.failures:
        print(f"failed task seed {failure.task.seed}: {failure.error}", file=sys.stderr)
    written = save_episodes(args.out, result.episodes, decode=chat.decode)
    print(f"wrote {written} episodes to {args.out}")
    raised = [e for e in result.episodes if e.truncation_reason == "env_error"]
    if len(result.failures) + len(raised) == len(tasks):  # nothing was evaluated: not a success
        from agentrl.failures import NoEpisodesError, common_reasons

        reasons = common_reasons(result.failures) if result.failures else raised[0].info.get("env_error")
        raise NoEpisodesError(f"--env: every task failed to start ({len(result.failures)}) or its "
                              f"environment raised ({len(raised)}); {reasons}")
    return 0


def _runner_config(args: argparse.Namespace, compaction: object):
    from agentrl.runner import RunnerConfig

    return RunnerConfig(
        max_response_tokens=args.max_response_tokens,
        context_budget=args.context_budget,
        max_turns=args.max_turns,
        max_total_tokens=args.max_total_tokens,
        max_compactions=args.max_compactions,
        compaction=compaction,  # type: ignore[arg-type]
        temperature=args.temperature,
        top_p=args.top_p,
        max_concurrent=args.max_concurrent,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from agentrl.train import config_for, train

    cfg = config_for(
        args.config, args.set, iterations=args.iterations, run_dir=args.run_dir, resume=args.resume
    )
    run_dir = train(cfg, resume=args.resume is not None, progress=not args.quiet)
    print(f"run written to {run_dir}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from agentrl.compare import compare

    algos = None if args.algos is None else [a.strip() for a in args.algos.split(",") if a.strip()]
    report = compare(
        args.env, algos=algos, seeds=args.seeds, budget=args.budget, out=args.out, model=args.model,
        config_dir=args.config_dir, configs=args.config, env_options=args.env_option, overrides=args.set,
        variants=args.variant, eval_episodes=args.eval_episodes, progress=not args.quiet,
    )
    print(f"report written to {report}")
    return 0


def _cmd_sft(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agentrl.compaction import CompactionConfig

    compaction = CompactionConfig(strategy=args.compaction, keep_last_turns=args.keep_last,
                                  max_summary_tokens=args.max_summary_tokens)
    config = _runner_config(args, compaction)

    from agentrl.sft import SFTSettings, warm_start

    settings = SFTSettings(
        env_name=args.env, options=dict(_parse_option(o) for o in args.env_option), out=Path(args.out),
        model=None if args.model is None else Path(args.model), size=args.size, episodes=args.episodes,
        epochs=args.epochs, lr=args.lr, seed=args.seed, eval_episodes=args.eval_episodes,
        heldout_demos=args.heldout_demos, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
        backend=args.backend,
    )
    summary = warm_start(settings, config)
    ev = summary["eval"]
    if ev["episodes"]:
        print(f"success on {ev['episodes']} held-out episodes: before {ev['success_before']:.3f}  "
              f"after {ev['success_after']:.3f}")
    print(f"wrote the fine-tuned model to {args.out}")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from agentrl.viewer.data import open_source
    from agentrl.viewer.server import export, make_server, url_of

    source = open_source(args.run_dir)
    if args.export is not None:
        path, count = export(source, args.export, max_episodes=args.max_episodes)
        print(f"wrote {path} ({count} episodes; opens with no server or network)")
        return 0
    server = make_server(source, host=args.host, port=args.port)
    print(f"serving {len(source.index()['episodes'])} episodes of {args.run_dir} at {url_of(server)} "
          "(Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default, except where there is none to show (unset, a flag off,
    an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or action.default in (None, False, []) \
                or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def _command(commands: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    """A sub-parser whose ``--help`` starts with ``text`` and shows the defaults."""
    return commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                               formatter_class=_HelpFormatter)


def _add_env_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True,
                   help="a registered environment (agentrl envs) or module:attr of an environment class")
    p.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment option; repeatable (values read as JSON when they parse)")


def _add_runner_flags(p: argparse.ArgumentParser, *, keep_last: int, max_summary_tokens: int,
                      max_response_tokens: int, context_budget: int) -> None:
    """The rollout budgets ``eval`` and ``sft`` share (``RunnerConfig``; docs/runner.md)."""
    p.add_argument("--compaction", default="policy", help="policy, env, keep_last or none")
    p.add_argument("--keep-last", type=int, default=keep_last, help="turns kept verbatim after a compaction")
    p.add_argument("--max-summary-tokens", type=int, default=max_summary_tokens,
                   help="the most tokens of a policy summary (kept free in every window with policy "
                        "compaction)")
    p.add_argument("--max-response-tokens", type=int, default=max_response_tokens,
                   help="the most tokens of one response (an action)")
    p.add_argument("--context-budget", type=int, default=context_budget,
                   help="tokens in one context window (a sub-trace); compaction keeps each window within it")
    p.add_argument("--max-turns", type=int, default=32, help="policy turns per episode before it is cut")
    p.add_argument("--max-total-tokens", type=int, default=None,
                   help="tokens per episode over all its windows before it is cut (default: no cap)")
    p.add_argument("--max-compactions", type=int, default=8, help="compactions per episode before it is cut")
    p.add_argument("--max-concurrent", type=int, default=64, help="episodes played at once")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")


def _add_view_parser(commands: argparse._SubParsersAction) -> None:
    view = _command(commands, "view", "look at a run's episodes, token by token, in a web page")
    view.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or an agentrl compare output")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on")
    view.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    view.add_argument("--export", metavar="FILE.html",
                      help="write one self-contained page instead of serving (opens with the network off)")
    view.add_argument("--max-episodes", type=int, default=200,
                      help="with --export: the first N episodes of the run go in the page")
    view.set_defaults(func=_cmd_view)


def _add_sft_parser(commands: argparse._SubParsersAction) -> None:
    # The defaults are agentrl.sft's DEFAULT_* (a test checks it), written out so --help imports no torch.
    sft = _command(commands, "sft", "fine-tune a model on an environment's expert episodes")
    _add_env_flags(sft)
    sft.add_argument("--model", help="a Hugging Face causal LM directory (default: a fresh default model)")
    sft.add_argument("--size", default="tiny", help="the fresh default model's size: tiny or small")
    sft.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    sft.add_argument("--episodes", type=int, default=32, help="expert demonstrations")
    sft.add_argument("--epochs", type=int, default=8, help="passes over the demonstrations")
    sft.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    sft.add_argument("--lr-schedule", default="constant",
                     help="constant, or cosine (from --lr to 0 at the last step); after any warm-up")
    sft.add_argument("--warmup-steps", type=int, default=0, help="optimiser steps of linear warm-up")
    sft.add_argument("--seed", type=int, default=0, help="seeds the demonstrations, the model and the order")
    sft.add_argument("--eval-episodes", type=int, default=32,
                     help="held-out episodes played before and after (0: no evaluation)")
    sft.add_argument("--heldout-demos", type=int, default=16,
                     help="expert episodes on held-out seeds whose NLL is printed after each epoch (0: none)")
    # Budgets of examples/*_graph_nav.yaml: the graph_nav small expert finishes every demonstration in them
    # (with 128-token responses and summaries kept twice, the 1024-token window left it 12 of 32).
    _add_runner_flags(sft, keep_last=1, max_summary_tokens=64, max_response_tokens=48, context_budget=1024)
    sft.add_argument("--backend", choices=("torch", "vllm"), default="torch",
                     help="the evaluation's sampler (vllm: the fine-tuned weights are pushed to the engine)")
    sft.set_defaults(func=_cmd_sft)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="agentrl",
        description="Reinforcement learning of LLM agents on long, multi-step, tool-using tasks.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    envs = _command(commands, "envs", "list the registered environments, one line each")
    envs.set_defaults(func=_cmd_envs)

    init = _command(commands, "init-model", "write a default tiny model and its tokenizer")
    init.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    init.add_argument("--size", default="tiny", help="tiny (~1M parameters) or small (~10M)")
    init.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    init.add_argument("--vocab-size", type=int, default=2048,
                      help="the most tokens of the trained tokenizer; a small corpus runs out of merges "
                           "first (the built-in corpus gives about 1,200)")
    init.add_argument("--env", action="append", default=[], metavar="NAME",
                      help="add this environment's expert episodes to the tokenizer's corpus (a registered "
                           "name or module:attr); repeatable")
    init.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                      help="an option of every --env environment; repeatable")
    init.set_defaults(func=_cmd_init_model)

    ev = _command(commands, "eval", "run episodes of an environment with a model and report")
    _add_env_flags(ev)
    ev.add_argument("--model", required=True, help="a Hugging Face causal LM directory")
    ev.add_argument("--episodes", type=int, default=8, help="how many episodes (seeds seed..seed+N-1)")
    _add_runner_flags(ev, keep_last=2, max_summary_tokens=128, max_response_tokens=128, context_budget=1024)
    ev.add_argument("--backend", choices=("torch", "vllm"), default="torch",
                    help="the sampler: the model in this process (torch) or a vLLM engine (docs/vllm.md)")
    ev.add_argument("--batching", choices=("static", "continuous"), default="static",
                    help="static rounds, or continuous batching (a turn leaves the batch when it ends; "
                         "torch backend, Qwen2 models; docs/runner.md)")
    ev.add_argument("--seed", type=int, default=0, help="the first task seed, and the sampling seed")
    ev.add_argument("--out", default=None,
                    help="where to write the episodes (JSONL; default runs/eval_<env>/episodes.jsonl)")
    ev.set_defaults(func=_cmd_eval)

    tr = _command(commands, "train", "train a policy with PPO or GRPO from a YAML config")
    tr.add_argument("--config", help="a YAML config (see examples/*.yaml and docs/training.md)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. ppo.clip_high=0.3; repeatable")
    tr.add_argument("--iterations", type=int,
                    help="override run.iterations (policy iterations; PPO runs its ppo.value_pretrain_steps "
                         "critic-only iterations first, on top)")
    tr.add_argument("--run-dir", help="override run.run_dir (default runs/<run.name>)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    tr.add_argument("--quiet", action="store_true", help="no progress line")
    tr.set_defaults(func=_cmd_train)

    _add_compare_parser(commands)
    _add_sft_parser(commands)
    _add_view_parser(commands)
    return parser


def _add_compare_parser(commands: argparse._SubParsersAction) -> None:
    cmp = _command(commands, "compare", "train PPO and GRPO (and variants) on one budget; report")
    cmp.add_argument("--env", help="the environment of every run: a registered name or module:attr; it "
                                   "replaces the configs' (and their options); without --config it also "
                                   "names the configs, <config-dir>/<algo>_<env>.yaml")
    cmp.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                     help="an option of the environment (env.options.KEY); repeatable")
    cmp.add_argument("--config", action="append", default=[], metavar="FILE",
                     help="a config an arm starts from, one per algorithm (its `algorithm` says whose); "
                          "repeatable")
    cmp.add_argument("--algos", help="comma-separated algorithms (default: ppo,grpo, or those of --config)")
    cmp.add_argument("--seeds", type=int, default=3, help="runs per arm, run.seed 0..K-1")
    cmp.add_argument("--budget", type=int, default=1024, help="environment steps per run (run.max_env_steps)")
    cmp.add_argument("--model", help="the starting model of every run (default: a fresh tiny model)")
    cmp.add_argument("--config-dir",
                     help="where the <algo>_<env>.yaml configs are (default: the example configs installed "
                          "with agentrl, examples/ in a clone)")
    cmp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field of every run; repeatable")
    cmp.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                     help="an extra arm <algo>+NAME with these overrides; repeatable")
    cmp.add_argument("--eval-episodes", type=int, default=64, help="held-out episodes per run")
    cmp.add_argument("--out", help="output directory (default runs/compare_<env>)")
    cmp.add_argument("--quiet", action="store_true", help="no per-iteration progress line")
    cmp.set_defaults(func=_cmd_compare)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentrl`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from agentrl.errors import EXPECTED, one_line

    try:
        return args.func(args)
    except EXPECTED as err:  # a bad config or option, or a refused write: one line (agentrl.errors)
        print(f"agentrl {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
