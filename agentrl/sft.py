"""Supervised warm start: behaviour cloning of an environment's expert before RL.

    agentrl sft --env graph_nav --env-option size=small --out runs/sft_graph_nav [--episodes N] [--epochs E]

1. ``demonstrations``: the runner plays the environment's expert (``Runner.run(..., teacher=True)``):
   the actions are ``expert_action()`` and, with the ``policy`` compaction strategy, the summaries the
   policy is asked for are ``state_digest()``. They go through exactly the token stream the runner
   builds when the model samples (chat template, observation deltas, budgets, compaction, resumed
   windows), so SFT trains the distribution RL will later sample from, summaries included: the model
   learns to act and to summarise in the windows it will actually see.
2. ``finetune``: the negative log-likelihood of the policy tokens only (the demonstration's actions and
   summaries, each with its stop token; prompts, observations and template tokens are context, never
   targets), token-mean over each mini-batch, AdamW, gradient clipping, in a shuffled order derived
   from ``seed``. It reuses the learner's batching (``agentrl.batch``): rows are sub-traces, packed
   into micro-batches by a token budget, log-probs aligned so that token t is scored by the output at
   t - 1.
3. ``evaluate``: the success rate of the model on held-out seeds, sampled with the normal runner, on
   the torch backend or, with ``backend="vllm"``, on a vLLM engine started on the starting weights and
   given the fine-tuned ones through ``agentrl.weight_sync.push_weights`` (as ``agentrl train`` does).
4. ``heldout_nll``: the NLL of the expert's episodes on held-out seeds, never trained on, before
   fine-tuning and after every epoch, split by what the tokens write (``token_kinds``: tool-call
   argument values, the rest of the calls, text such as summaries). It costs seconds where an
   evaluation costs minutes, and it shows what training loss hides: memorised demonstrations (training
   loss far below it) and a policy that writes well-formed calls but cannot yet copy names from its
   context (high ``argument`` NLL, near-zero ``call`` NLL).

The goal is a starting checkpoint with *partial* success, which leaves RL room to improve; the CLI's
defaults (few demonstrations, few epochs: a few CPU minutes) aim at that, and ``--episodes``,
``--epochs``, ``--lr``, ``--lr-schedule`` and ``--warmup-steps`` move it. On graph_nav ``size=small``
(docs/results.md, and the slow tests in tests/test_sft.py) the default tiny model learns the call format
within minutes but, after tens of CPU minutes, still does not copy a room's name from its context
(about 1.5 nats per name token; held-out success 0). With ``numbered=true`` (an action names a listed
number), 3,200 explorer demonstrations, one epoch at 1e-3 with warm-up and cosine decay (about 11 CPU
minutes) take it from 0 to 0.11-0.17 held-out success (64 episodes); with ``marked=true`` as well (each
exit to a visited room is marked, so the model need not remember where it has been), to 0.39.

Demonstration seeds (``DEMO_SEED_START``) and evaluation seeds (``EVAL_SEED_START``)
are disjoint from each other and from the seeds ``agentrl train`` draws (``run.seed * 10**6 + k``).

Departures from textbook behaviour cloning: an expert episode that does not end in success (cut by a
cap) is kept, since every action in it is still the expert's; a ``policy`` summary cut at
``max_summary_tokens`` is trained as cut (no stop token), exactly as the runner records it.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl.batch import Row, collate, pack, policy_token_count, rows_from_episodes
from agentrl.chat import ChatFormat
from agentrl.forward import policy_logprobs
from agentrl.losses import aggregate
from agentrl.models import init_model, load_model
from agentrl.registry import make
from agentrl.rollout import TorchSampler
from agentrl.runner import NoSampler, Runner, RunnerConfig, RunResult, Task
from agentrl.sampling import Sampler
from agentrl.tools import OPEN_TAG
from agentrl.types import Episode
from agentrl.weight_sync import push_weights

DEMO_SEED_START = 800_000_000  # demonstrations: DEMO_SEED_START + seed * 10**6 + i
EVAL_SEED_START = 900_000_000  # held-out evaluation: EVAL_SEED_START + i, the same for every run
SFT_FILE = "sft.json"
BACKENDS = ("torch", "vllm")
# The CLI's defaults (a few CPU minutes on graph_nav small); see the module docstring.
DEFAULT_EPISODES = 32
DEFAULT_EPOCHS = 8
DEFAULT_LR = 3e-3
# A micro-batch's common prefix (an environment's system prompt and tools) is read once when it has at
# least this many tokens (agentrl.forward.shared_prefix_forward), as optim.shared_prefix's default does.
SHARED_PREFIX = 16


def demo_seeds(n: int, seed: int = 0) -> list[int]:
    """The environment seeds of ``n`` demonstrations for run seed ``seed``."""
    return [DEMO_SEED_START + seed * 1_000_000 + i for i in range(n)]


def eval_seeds(n: int) -> list[int]:
    """The environment seeds of ``n`` held-out evaluation episodes (disjoint from ``demo_seeds``)."""
    return [EVAL_SEED_START + i for i in range(n)]


def _tasks(env_name: str, seeds: Sequence[int]) -> list[Task]:
    return [Task(seed=s, group_id=f"{env_name}:{s}") for s in seeds]


def demonstrations(
    env_name: str,
    options: Mapping[str, Any],
    seeds: Sequence[int],
    chat: ChatFormat,
    runner_config: RunnerConfig,
) -> list[Episode]:
    """Expert episodes of ``env_name`` (built with ``options``), one per seed, in the runner's token stream.

    The runner's teacher mode (``Runner.run(..., teacher=True)``): policy tokens are the expert's actions
    and, for the ``policy`` compaction strategy, its state digests as summaries; their log-probs are 0.
    No model is involved. An episode's ``info["success"]`` says whether the expert succeeded under these
    budgets; a task whose ``reset`` failed gives no episode, so there may be fewer than ``len(seeds)``.
    """
    result = Runner(NoSampler(), chat, runner_config).run(
        lambda: make(env_name, **options), _tasks(env_name, seeds), teacher=True
    )
    return result.episodes


def evaluate(
    policy: Any,
    chat: ChatFormat,
    env_name: str,
    options: Mapping[str, Any],
    seeds: Sequence[int],
    runner_config: RunnerConfig,
    *,
    seed: int = 0,
    sampler: Sampler | None = None,
) -> RunResult:
    """Episodes of ``policy`` on ``seeds``, sampled by the normal runner (``runner_config``'s temperature)
    with ``sampler`` (one that holds ``policy``'s weights) or, when None, a ``TorchSampler`` on it."""
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            return Runner(sampler or TorchSampler(policy), chat, runner_config).run(
                lambda: make(env_name, **options), _tasks(env_name, seeds), seed=seed
            )
    finally:
        policy.train(was_training)


def _order(num_rows: int, epoch: int, seed: int) -> list[int]:
    """The shuffled row order of one epoch, from ``seed`` and the epoch alone."""
    order = list(range(num_rows))
    random.Random(f"sft:{seed}:{epoch}").shuffle(order)
    return order


def nll_step(
    policy: Any,
    rows: Sequence[Row],
    *,
    micro_batch_tokens: int,
    temperature: float = 1.0,
    pad_id: int = 0,
    shared_prefix: int = SHARED_PREFIX,
) -> torch.Tensor:
    """Back-propagate the token-mean negative log-likelihood of the policy tokens of ``rows``.

    The rows are packed into micro-batches of at most ``micro_batch_tokens`` padded tokens; each
    micro-batch's summed NLL is divided by the policy tokens of all ``rows`` (``losses.aggregate``,
    ``token-mean``), so the gradients add up to those of the whole mini-batch. Returns the loss, 0-d,
    detached. Tokens outside the loss mask never reach the loss (``policy_logprobs`` zeroes them).
    """
    device = next(policy.parameters()).device
    n = policy_token_count(rows)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for mb in pack(rows, max_tokens=micro_batch_tokens):
        batch = collate(rows, mb.indices, pad_id=pad_id).to(device)
        logprobs = policy_logprobs(policy, batch, temperature=temperature,
                                   shared_prefix=shared_prefix).logprobs  # (B, T)
        loss = aggregate(-logprobs, batch.loss_mask, "token-mean", num_tokens=n)
        loss.backward()
        total += loss.detach().double()
    return total


def finetune(
    policy: Any,
    episodes: Sequence[Episode],
    *,
    epochs: int,
    lr: float,
    micro_batch_tokens: int,
    seed: int,
    temperature: float = 1.0,
    minibatch_rows: int = 8,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
    pad_id: int = 0,
    lr_schedule: str = "constant",
    warmup_steps: int = 0,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Fine-tune ``policy`` in place on the policy tokens of ``episodes`` (behaviour cloning).

    Each epoch shuffles the rows (one per sub-trace; ``_order``: a function of ``seed`` and the epoch)
    and splits them into mini-batches of ``minibatch_rows``; each mini-batch is one AdamW step on its
    token-mean NLL (``nll_step``), with the global gradient norm clipped to ``grad_clip``. ``temperature``
    divides the logits as when sampling, so the model fits the distribution the runner will sample
    from (1 for the default rollout). Step k's learning rate is ``lr * lr_factor(k, ...)``: a linear
    warm-up over the first ``warmup_steps`` steps, times 1 (``lr_schedule="constant"``) or a half cosine
    that falls to 0 at the last step (``"cosine"``).

    Returns one dict per epoch: ``epoch``, ``sft/loss`` (the token-weighted mean NLL of its steps, per
    policy token, measured before each step), ``sft/grad_norm`` (mean, before clipping), ``sft/steps``,
    ``sft/tokens`` (policy tokens) and ``sft/seconds``; ``on_epoch`` gets each as its epoch ends and may
    add its own measurements to it (``warm_start`` adds the held-out NLL). The model is left in eval mode.
    """
    for name, value in (("epochs", epochs), ("micro_batch_tokens", micro_batch_tokens),
                        ("minibatch_rows", minibatch_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
    _check_schedule(lr_schedule, warmup_steps)
    rows = [row for row in rows_from_episodes(episodes) if row.num_policy_tokens > 0]
    if not rows:
        raise ValueError("episodes: no policy tokens to learn from")
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total_steps = epochs * math.ceil(len(rows) / minibatch_rows)
    step = 0
    policy.train()
    history = []
    for epoch in range(1, epochs + 1):
        start, order = time.perf_counter(), _order(len(rows), epoch, seed)
        loss_sum, norm_sum, tokens, steps = 0.0, 0.0, 0, 0
        for i in range(0, len(order), minibatch_rows):
            chosen = [rows[j] for j in order[i : i + minibatch_rows]]
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, total_steps, lr_schedule, warmup_steps)
            step += 1
            loss = nll_step(policy, chosen, micro_batch_tokens=micro_batch_tokens,
                            temperature=temperature, pad_id=pad_id)
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            n = policy_token_count(chosen)
            loss_sum, norm_sum = loss_sum + float(loss) * n, norm_sum + float(norm)
            tokens, steps = tokens + n, steps + 1
        history.append({
            "epoch": float(epoch), "sft/loss": loss_sum / tokens, "sft/grad_norm": norm_sum / steps,
            "sft/steps": float(steps), "sft/tokens": float(tokens),
            "sft/seconds": time.perf_counter() - start,
        })
        if on_epoch is not None:
            on_epoch(history[-1])
    policy.eval()
    optimizer.zero_grad(set_to_none=True)
    return history


LR_SCHEDULES = ("constant", "cosine")


def _check_schedule(lr_schedule: str, warmup_steps: int) -> None:
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps: expected an int >= 0, got {warmup_steps!r}")


def lr_factor(step: int, total_steps: int, lr_schedule: str, warmup_steps: int) -> float:
    """The multiple of the learning rate at optimiser step ``step`` (from 0) of ``total_steps``: the
    warm-up factor, ``(step + 1) / (warmup_steps + 1)`` while ``step < warmup_steps`` and 1 after, times
    1 (``constant``) or ``(1 + cos(pi * step / total_steps)) / 2`` (``cosine``, towards 0 at the end)."""
    _check_schedule(lr_schedule, warmup_steps)
    warm = (step + 1) / (warmup_steps + 1) if step < warmup_steps else 1.0
    if lr_schedule == "constant":
        return warm
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


@torch.no_grad()
def _scored_rows(
    policy: Any, episodes: Sequence[Episode], *, micro_batch_tokens: int, temperature: float, pad_id: int
) -> Iterator[tuple[Row, torch.Tensor]]:
    """Each sub-trace of ``episodes`` with policy tokens, and its (T,) log-probs under ``policy`` (0 where
    the loss mask is 0), scored in micro-batches of at most ``micro_batch_tokens`` padded tokens."""
    rows = [row for row in rows_from_episodes(episodes) if row.num_policy_tokens > 0]
    device = next(policy.parameters()).device
    for mb in pack(rows, max_tokens=micro_batch_tokens):
        batch = collate(rows, mb.indices, pad_id=pad_id).to(device)
        logprobs = policy_logprobs(policy, batch, temperature=temperature,
                                   shared_prefix=SHARED_PREFIX).logprobs.double().cpu()
        for b, r in enumerate(mb.indices):
            yield rows[r], logprobs[b, : len(rows[r].token_ids)]


def demo_nll(
    policy: Any, episodes: Sequence[Episode], *, micro_batch_tokens: int, temperature: float = 1.0,
    pad_id: int = 0,
) -> float:
    """The token-mean NLL of the policy tokens of ``episodes`` under ``policy`` (no update)."""
    total, count = 0.0, 0
    for row, logprobs in _scored_rows(policy, episodes, micro_batch_tokens=micro_batch_tokens,
                                      temperature=temperature, pad_id=pad_id):
        total -= float(logprobs.sum())
        count += row.num_policy_tokens
    return total / max(count, 1)


TOKEN_KINDS = ("argument", "call", "text")


def _argument_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges, in ``text``, of the argument values of its tool calls (strings without their
    quotes, numbers and booleans as written); calls that do not parse contribute nothing."""
    ranges: list[tuple[int, int]] = []
    start = 0
    while (opened := text.find(OPEN_TAG, start)) >= 0:
        body_start = text.find("{", opened)
        start = opened + len(OPEN_TAG)
        if body_start < 0:
            break
        try:
            call, end = json.JSONDecoder().raw_decode(text, body_start)
        except json.JSONDecodeError:
            continue
        arguments = call.get("arguments") if isinstance(call, dict) else None
        at = text.find('"arguments"', body_start, end)
        if not isinstance(arguments, dict) or at < 0:
            continue
        for value in arguments.values():
            if isinstance(value, dict | list) or value is None:
                continue
            written = json.dumps(value)[1:-1] if isinstance(value, str) else json.dumps(value)
            found = text.find(written, at, end)
            if found >= 0 and written:
                ranges.append((found, found + len(written)))
                at = found + len(written)
        start = end
    return ranges


def token_kinds(
    token_ids: Sequence[int], loss_mask: Sequence[int], decode: Callable[[list[int]], str]
) -> list[str | None]:
    """What each policy token of a sub-trace writes: ``argument`` (a tool call's argument value: the room,
    item or number the policy must get from its context), ``call`` (the rest of a reply that calls a
    tool: tags, JSON, tool name) or ``text`` (a reply without a tool call: a summary, a final answer);
    None where ``loss_mask`` is 0. ``decode`` turns token ids into text (the tokenizer's ``decode``)."""
    kinds: list[str | None] = [None] * len(token_ids)
    i = 0
    while i < len(token_ids):
        if not loss_mask[i]:
            i += 1
            continue
        j = i
        while j < len(token_ids) and loss_mask[j]:
            j += 1
        span = list(token_ids[i:j])
        text = decode(span)
        if OPEN_TAG not in text:
            kinds[i:j] = ["text"] * (j - i)
        else:
            ranges = _argument_ranges(text)
            ends = [len(decode(span[: k + 1])) for k in range(len(span))]  # prefix decodes: byte-safe
            for k in range(len(span)):
                lo, hi = (ends[k - 1] if k else 0), ends[k]
                inside = any(lo < b and a < hi for a, b in ranges)
                kinds[i + k] = "argument" if inside else "call"
        i = j
    return kinds


@torch.no_grad()
def heldout_nll(
    policy: Any, episodes: Sequence[Episode], decode: Callable[[list[int]], str], *, micro_batch_tokens: int,
    temperature: float = 1.0, pad_id: int = 0,
) -> dict[str, float]:
    """The NLL per policy token of ``episodes`` (demonstrations the model is not trained on), in all and
    by ``token_kinds``: ``nll``, ``nll/argument``, ``nll/call``, ``nll/text`` (a kind with no token is
    left out). Training loss far below ``nll`` is memorisation; a high ``nll/argument`` with a low
    ``nll/call`` is a policy that writes well-formed calls but cannot yet copy the names from its context.
    The model's mode is restored."""
    was_training = policy.training
    policy.eval()
    sums = {kind: 0.0 for kind in TOKEN_KINDS}
    counts = {kind: 0 for kind in TOKEN_KINDS}
    try:
        for row, logprobs in _scored_rows(policy, episodes, micro_batch_tokens=micro_batch_tokens,
                                          temperature=temperature, pad_id=pad_id):
            kinds = token_kinds(row.token_ids.tolist(), row.loss_mask.tolist(), decode)
            for t, kind in enumerate(kinds):
                if kind is not None:
                    sums[kind] -= float(logprobs[t])
                    counts[kind] += 1
    finally:
        policy.train(was_training)
    if not sum(counts.values()):
        raise ValueError("episodes: no policy tokens to score")
    out = {"nll": sum(sums.values()) / sum(counts.values())}
    out.update({f"nll/{k}": sums[k] / counts[k] for k in TOKEN_KINDS if counts[k]})
    return out


# ---- the ``agentrl sft`` command --------------------------------------------------------------------


@dataclass(frozen=True)
class SFTSettings:
    """What ``warm_start`` does: the environment, the model, the data, the optimisation, the evaluation.

    Attributes:
        env_name: a registered environment (``agentrl envs``) or a ``module:attr`` path.
        options: the environment's keyword options.
        out: the directory to write (must not exist or be empty).
        model: a Hugging Face causal LM directory to start from; None: a fresh default model.
        size: the fresh default model's size (``tiny`` or ``small``) when ``model`` is None.
        episodes: expert demonstrations to collect (seeds ``demo_seeds(episodes, seed)``).
        epochs: passes over the demonstrations.
        lr: AdamW's learning rate.
        seed: seeds the fresh model, the demonstration seeds, the shuffling and the evaluation's sampling.
        eval_episodes: held-out episodes (seeds ``eval_seeds``) played before and after; 0: no evaluation.
        heldout_demos: the expert's episodes on the first ``heldout_demos`` evaluation seeds, never trained
            on, whose NLL (``heldout_nll``) is measured before fine-tuning and after every epoch; 0: none.
        minibatch_rows: sub-traces per optimiser step.
        lr_schedule: ``constant`` or ``cosine`` (towards 0 at the last step); see ``lr_factor``.
        warmup_steps: optimiser steps over which the learning rate rises linearly to the schedule's.
        micro_batch_tokens: padded tokens per forward pass.
        grad_clip: the global gradient-norm clip.
        backend: the evaluation's sampler, ``torch`` or ``vllm`` (``rollout.backend``'s choices).
    """

    env_name: str
    options: Mapping[str, Any]
    out: Path
    model: Path | None = None
    size: str = "tiny"
    episodes: int = DEFAULT_EPISODES
    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    seed: int = 0
    eval_episodes: int = 32
    heldout_demos: int = 16
    minibatch_rows: int = 4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    micro_batch_tokens: int = 4096
    grad_clip: float = 1.0
    backend: str = "torch"

    def __post_init__(self) -> None:
        for name in ("episodes", "epochs", "minibatch_rows", "micro_batch_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        for name in ("eval_episodes", "heldout_demos"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a finite number > 0, got {self.lr!r}")
        _check_schedule(self.lr_schedule, self.warmup_steps)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise ValueError(f"out: {self.out} exists and is not an empty directory")


def _success(result: RunResult | None) -> float | None:
    return None if result is None else result.metrics["success_rate"]


def warm_start(settings: SFTSettings, runner_config: RunnerConfig, *, log: Any = print) -> dict[str, Any]:
    """Collect demonstrations, fine-tune, evaluate before and after, and write the model to ``settings.out``.

    The output is an ordinary Hugging Face directory (weights and tokenizer, ``save_pretrained``),
    usable as ``model.path`` in a training config, plus ``sft.json``: the settings, the runner config,
    the expert's success on the demonstrations, the held-out demonstrations' NLL before fine-tuning
    (``heldout_nll``; after each epoch it is in that epoch's metrics), the per-epoch metrics and the
    success rates before and after (None without evaluation). Returns what ``sft.json`` holds. ``log``
    gets one line per stage.
    """
    s = settings
    make(s.env_name, **s.options)  # an unknown environment or option fails here, before any work
    policy, tokenizer = _starting_model(s)
    chat = ChatFormat(tokenizer)
    pad_id = tokenizer.pad_token_id or 0
    demos = demonstrations(s.env_name, s.options, demo_seeds(s.episodes, s.seed), chat, runner_config)
    if not demos:
        raise ValueError(f"--env {s.env_name}: every demonstration task failed to start")
    expert = sum(bool(e.info.get("success")) for e in demos) / len(demos)
    log(f"demonstrations: {len(demos)} episodes, expert success {expert:.3f}, "
        f"{sum(e.num_policy_tokens for e in demos)} policy tokens of {sum(e.num_tokens for e in demos)}")
    held_out = eval_seeds(s.eval_episodes)
    heldout_demos = (demonstrations(s.env_name, s.options, eval_seeds(s.heldout_demos), chat, runner_config)
                     if s.heldout_demos else [])

    def heldout() -> dict[str, float]:
        if not heldout_demos:
            return {}
        nll = heldout_nll(policy, heldout_demos, tokenizer.decode, micro_batch_tokens=s.micro_batch_tokens,
                          temperature=runner_config.temperature, pad_id=pad_id)
        return {f"heldout/{k}": v for k, v in nll.items()}

    def heldout_line(h: Mapping[str, float]) -> str:
        if "heldout/nll" not in h:
            return ""
        parts = [f"{k.removeprefix('heldout/nll/')} {h[k]:.3f}" for k in h if k.startswith("heldout/nll/")]
        return f"  held-out NLL {h['heldout/nll']:.4f} ({', '.join(parts)})"

    with tempfile.TemporaryDirectory() as tmp:
        sampler = _eval_sampler(s, policy, Path(tmp), runner_config) if held_out else None

        def success() -> float | None:
            if not held_out:
                return None
            push_weights(sampler, policy)  # the engine evaluates the weights as they are now
            return _success(evaluate(policy, chat, s.env_name, s.options, held_out, runner_config,
                                     seed=s.seed, sampler=sampler))

        summary = _train_and_evaluate(s, policy, demos, runner_config, pad_id, success, heldout, heldout_line,
                                      log)
    summary = {
        "settings": summary["settings"], "runner": summary["runner"],
        "demonstrations": {"episodes": len(demos), "expert_success": expert},
        "heldout_demonstrations": {"episodes": len(heldout_demos), **summary["nll_before"]},
        "epochs": summary["epochs"], "eval": summary["eval"],
    }
    s.out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(s.out)
    tokenizer.save_pretrained(s.out)
    (s.out / SFT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _eval_sampler(s: SFTSettings, policy: Any, tmp: Path, runner_config: RunnerConfig) -> Sampler:
    """The evaluation's sampler: a ``TorchSampler`` on ``policy``, or a vLLM engine started on a copy of
    the starting weights written under ``tmp`` (an engine loads its first weights from disk)."""
    from agentrl.backends import make_sampler
    from agentrl.config import VLLMSection

    if s.backend == "torch":
        return TorchSampler(policy)
    policy.save_pretrained(tmp)
    return make_sampler(s.backend, policy, tmp, vllm=VLLMSection(max_model_len=runner_config.context_budget),
                        seed=s.seed)


def _train_and_evaluate(
    s: SFTSettings, policy: Any, demos: list[Episode], runner_config: RunnerConfig, pad_id: int,
    success: Callable[[], float | None], heldout: Callable[[], dict[str, float]],
    heldout_line: Callable[[Mapping[str, float]], str], log: Any,
) -> dict[str, Any]:
    """Success before, the epochs (each with its held-out NLL), success after: ``sft.json``'s record."""
    before = success()
    if before is not None:
        log(f"success on {s.eval_episodes} held-out episodes before fine-tuning: {before:.3f}")
    nll_before = heldout()
    if nll_before:
        log(f"before fine-tuning:{heldout_line(nll_before)}")

    def epoch_line(h: dict[str, float]) -> None:
        h.update(heldout())
        log(f"epoch {int(h['epoch'])}: loss {h['sft/loss']:.4f}  grad norm {h['sft/grad_norm']:.3f}  "
            f"{h['sft/seconds']:.1f}s{heldout_line(h)}")

    history = finetune(policy, demos, epochs=s.epochs, lr=s.lr, micro_batch_tokens=s.micro_batch_tokens,
                       seed=s.seed, temperature=runner_config.temperature, minibatch_rows=s.minibatch_rows,
                       grad_clip=s.grad_clip, pad_id=pad_id, lr_schedule=s.lr_schedule,
                       warmup_steps=s.warmup_steps, on_epoch=epoch_line)
    after = success()
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "runner": _plain(runner_config),
        "nll_before": nll_before,
        "epochs": history,
        "eval": {"episodes": s.eval_episodes, "success_before": before, "success_after": after},
    }


def _starting_model(s: SFTSettings) -> tuple[Any, Any]:
    """``s.model`` loaded, or a fresh default model of ``s.size`` seeded by ``s.seed``."""
    if s.model is not None:
        return load_model(s.model)
    with tempfile.TemporaryDirectory() as tmp:
        return load_model(init_model(Path(tmp) / "model", size=s.size, seed=s.seed))


def _plain(value: Any) -> Any:
    """A (nested) dataclass as JSON-ready data."""
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value
