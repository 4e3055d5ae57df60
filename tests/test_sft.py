"""``agentrl.sft`` and ``agentrl sft``: behaviour cloning of the expert on the policy tokens only.

Fast: the NLL of the demonstrations falls; only policy tokens are targets; the loss is the plain token
mean whatever the micro-batching; the CLI writes a loadable model and ``sft.json``; bad input exits 2.
Slow (``make test-slow``): SFT lifts the tiny model's success from 0 to partial success on ledger count
and on graph_nav small with numbered and marked exits; PPO from the graph_nav checkpoint lifts it
further.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sft_recipes import GRAPH_NAV, GRAPH_NAV_SFT

from agentrl import sft
from agentrl.batch import rows_from_episodes
from agentrl.chat import ChatFormat
from agentrl.cli import build_parser, main
from agentrl.compaction import CompactionConfig
from agentrl.models import load_model
from agentrl.runner import RunnerConfig
from agentrl.types import Episode, Message, SubTrace

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {"size": "small", "expert_looks": False}
SHORT = RunnerConfig(max_response_tokens=48, context_budget=1024, max_turns=4, max_concurrent=8,
                     compaction=CompactionConfig(strategy="policy", keep_last_turns=1, max_summary_tokens=64))


@pytest.fixture(scope="module")
def model_and_chat(tiny_model_dir: Path):
    model, tokenizer = load_model(tiny_model_dir)
    return model, ChatFormat(tokenizer)


@pytest.fixture(scope="module")
def demos(model_and_chat) -> list[Episode]:
    return sft.demonstrations("graph_nav", OPTIONS, sft.demo_seeds(3), model_and_chat[1], SHORT)


def test_demonstrations_are_the_experts_actions_in_the_runner_stream(model_and_chat, demos) -> None:
    _, chat = model_and_chat
    assert len(demos) == 3 and all(e.num_turns == 4 for e in demos)
    first = demos[0].sub_traces[0]
    actions = [i for i, m in enumerate(first.loss_mask) if m]
    assert chat.decode([first.token_ids[i] for i in actions]).startswith('<tool_call>\n{"name": "move"')
    assert all(lp == 0.0 for lp, m in zip(first.logprobs, first.loss_mask, strict=True) if m)
    assert set(sft.demo_seeds(100)).isdisjoint(sft.eval_seeds(100))


def test_finetune_lowers_the_nll_of_the_demonstrations(model_and_chat, demos) -> None:
    model, _ = model_and_chat
    policy = type(model)(model.config)
    policy.load_state_dict(model.state_dict())
    before = sft.demo_nll(policy, demos, micro_batch_tokens=4096)
    seen: list[dict[str, float]] = []
    history = sft.finetune(policy, demos, epochs=3, lr=3e-3, micro_batch_tokens=4096, seed=0,
                           on_epoch=seen.append)
    assert seen == history
    after = sft.demo_nll(policy, demos, micro_batch_tokens=4096)
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0]
    assert history[0]["sft/tokens"] == sum(e.num_policy_tokens for e in demos)
    assert history[-1]["sft/loss"] < history[0]["sft/loss"]
    assert after < before - 1.0, (before, after)
    assert not policy.training


def _with_tail(episode: Episode, tail: list[int], *, as_policy: bool = False) -> Episode:
    """The episode with ``tail`` appended to its last sub-trace (observation tokens unless ``as_policy``)."""
    *rest, last = episode.sub_traces
    n = len(tail)
    grown = SubTrace(
        (*last.token_ids, *tail), (*last.loss_mask, *[int(as_policy)] * n),
        (*last.logprobs, *[0.0 if as_policy else None] * n), (*last.rewards, *[0.0] * n),
    )
    return replace(episode, sub_traces=(*rest, grown))


def test_only_policy_tokens_are_targets(model_and_chat, demos) -> None:
    # Observation tokens after the last action: had they been targets, changing them would change the
    # loss; as context they come after every policy token, so a causal model's loss cannot see them.
    model, chat = model_and_chat
    obs = chat.observation_ids([Message("tool", "You are in dusty-attic. Exits: pale-hall.")], sampled_ids=[])
    other = [(i + 7) % len(chat.tokenizer) for i in obs]
    base = sft.demo_nll(model, demos[:1], micro_batch_tokens=4096)
    a = sft.demo_nll(model, [_with_tail(demos[0], obs)], micro_batch_tokens=4096)
    b = sft.demo_nll(model, [_with_tail(demos[0], other)], micro_batch_tokens=4096)
    assert a == pytest.approx(base, rel=1e-6) and b == pytest.approx(base, rel=1e-6)
    marked = sft.demo_nll(model, [_with_tail(demos[0], other, as_policy=True)], micro_batch_tokens=4096)
    assert marked != pytest.approx(base, rel=1e-3)  # the same tokens as targets do count


def test_nll_step_is_the_token_mean_whatever_the_micro_batches(model_and_chat, demos) -> None:
    model, _ = model_and_chat
    rows = rows_from_episodes(demos)
    # The slow, obvious version: each row alone, log_softmax of the output at t - 1 scores token t.
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=row.token_ids[None]).logits[0].float()
            logp = torch.log_softmax(logits[:-1], -1).gather(-1, row.token_ids[1:, None])[:, 0]
            total += float(-logp[row.loss_mask[1:]].sum())
            count += int(row.loss_mask.sum())
    grads = []
    for budget in (100_000, 1):  # one micro-batch, or one row per micro-batch
        model.zero_grad(set_to_none=True)
        loss = sft.nll_step(model, rows, micro_batch_tokens=budget)
        assert float(loss) == pytest.approx(total / count, rel=1e-5)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_lr_factor_warms_up_then_holds_or_follows_a_half_cosine() -> None:
    assert [sft.lr_factor(k, 10, "constant", 3) for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [sft.lr_factor(k, 10, "cosine", 0) for k in (0, 5, 10)]
    assert cosine == pytest.approx([1.0, 0.5, 0.0])
    # the warm-up multiplies the cosine: step 1 of 4, warming over 3 steps: 0.5 * (1 + cos(pi / 4)) / 2
    assert sft.lr_factor(1, 4, "cosine", 3) == pytest.approx(0.5 * (1 + 2 ** -0.5) / 2)
    with pytest.raises(ValueError, match="lr_schedule"):
        sft.lr_factor(0, 10, "linear", 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        sft.lr_factor(0, 10, "cosine", -1)


def test_finetune_sets_each_steps_learning_rate_from_the_schedule(model_and_chat, demos, monkeypatch) -> None:
    model, _ = model_and_chat
    policy = type(model)(model.config)
    policy.load_state_dict(model.state_dict())
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    sft.finetune(policy, demos, epochs=2, lr=1e-3, micro_batch_tokens=4096, seed=0, minibatch_rows=1,
                 lr_schedule="cosine", warmup_steps=2)
    total = 2 * len(demos)  # one sub-trace per demonstration, one per step
    assert seen == pytest.approx([1e-3 * sft.lr_factor(k, total, "cosine", 2) for k in range(total)])
    assert seen[0] == pytest.approx(1e-3 / 3) and seen[2] > seen[-1] > 0


def test_token_kinds_mark_argument_values_calls_and_text(model_and_chat) -> None:
    tokenizer = model_and_chat[1].tokenizer
    call = '<tool_call>\n{"name": "move", "arguments": {"to": "pale-hall"}}\n</tool_call>'
    read = '<tool_call>\n{"name": "read", "arguments": {"index": 12}}\n</tool_call>'
    summary = 'Room: "pale-hall".'
    context = tokenizer("You see it.")["input_ids"]
    spans = [tokenizer(t)["input_ids"] for t in (call, read, summary)]
    ids, mask = [], []
    for span in spans:  # context, then a policy span, three times
        ids += context + span
        mask += [0] * len(context) + [1] * len(span)
    kinds = sft.token_kinds(ids, mask, tokenizer.decode)
    assert all(k is None for k, m in zip(kinds, mask, strict=True) if not m)
    written = {kind: "".join(tokenizer.decode([i]) for i, k in zip(ids, kinds, strict=True) if k == kind)
               for kind in sft.TOKEN_KINDS}
    assert written["argument"] == "pale-hall12"  # exactly the argument values, from both calls
    assert written["text"] == summary
    assert written["call"] == call.replace("pale-hall", "") + read.replace("12", "")
    # a call that does not parse has no argument tokens
    broken = tokenizer('<tool_call>{"name": "move", "arguments": {"to": "pale-hall"</tool_call>')["input_ids"]
    assert set(sft.token_kinds(broken, [1] * len(broken), tokenizer.decode)) == {"call"}


def test_heldout_nll_splits_the_demo_nll_by_token_kind(model_and_chat) -> None:
    model, chat = model_and_chat
    compacted = replace(SHORT, max_turns=10, context_budget=900)  # summaries too
    demos = sft.demonstrations("graph_nav", OPTIONS, sft.demo_seeds(2), chat, compacted)
    got = sft.heldout_nll(model, demos, chat.tokenizer.decode, micro_batch_tokens=1)
    assert got["nll"] == pytest.approx(sft.demo_nll(model, demos, micro_batch_tokens=4096), rel=1e-5)
    # the slow, obvious version: each row alone, token by token
    sums, counts = dict.fromkeys(sft.TOKEN_KINDS, 0.0), dict.fromkeys(sft.TOKEN_KINDS, 0)
    with torch.no_grad():
        for row in rows_from_episodes(demos):
            logits = model(input_ids=row.token_ids[None]).logits[0].float()
            logp = torch.log_softmax(logits[:-1], -1).gather(-1, row.token_ids[1:, None])[:, 0]
            kinds = sft.token_kinds(row.token_ids.tolist(), row.loss_mask.tolist(), chat.tokenizer.decode)
            for t, kind in enumerate(kinds):
                if kind is not None:
                    sums[kind] -= float(logp[t - 1])
                    counts[kind] += 1
    assert counts["argument"] > 0 and counts["call"] > 0 and counts["text"] > 0  # moves, looks, summaries
    for kind in sft.TOKEN_KINDS:
        assert got[f"nll/{kind}"] == pytest.approx(sums[kind] / counts[kind], rel=1e-4), kind
    assert not model.training


def test_cli_writes_a_loadable_model_and_sft_json(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sft"
    argv = ["sft", "--env", "graph_nav", "--env-option", "size=small", "--env-option", "expert_looks=false",
            "--model", str(tiny_model_dir), "--out", str(out), "--episodes", "2", "--epochs", "1",
            "--eval-episodes", "2", "--heldout-demos", "2", "--max-turns", "2", "--max-response-tokens", "24"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "before 0.000" in printed and f"to {out}" in printed
    # progress as it happens: the first evaluation, then each epoch, before the final line
    order = [printed.index(x) for x in ("before fine-tuning: 0.000", "epoch 1: loss", "before 0.000")]
    assert order == sorted(order)
    assert printed.count("held-out NLL") == 2  # before fine-tuning and after the epoch
    model, tokenizer = load_model(out)
    assert model.config.vocab_size == len(tokenizer)
    summary = json.loads((out / "sft.json").read_text())
    assert summary["settings"]["episodes"] == 2 and summary["settings"]["env_name"] == "graph_nav"
    assert summary["demonstrations"]["episodes"] == 2
    assert summary["eval"]["episodes"] == 2 and summary["eval"]["success_before"] == 0.0
    assert len(summary["epochs"]) == 1 and summary["runner"]["max_turns"] == 2
    assert summary["heldout_demonstrations"]["episodes"] == 2
    assert summary["epochs"][0]["heldout/nll"] < summary["heldout_demonstrations"]["heldout/nll"]
    before, _ = load_model(tiny_model_dir)
    changed = any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters(), strict=True))
    assert changed


def test_cli_without_evaluation_or_heldout_demos(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sft"
    assert main(["sft", "--env", "graph_nav", "--env-option", "size=small", "--model", str(tiny_model_dir),
                 "--out", str(out), "--episodes", "1", "--epochs", "1", "--eval-episodes", "0",
                 "--heldout-demos", "0", "--max-turns", "2"]) == 0
    assert "held-out" not in capsys.readouterr().out
    summary = json.loads((out / "sft.json").read_text())
    assert summary["heldout_demonstrations"] == {"episodes": 0}
    assert not any(k.startswith("heldout/") for k in summary["epochs"][0])
    assert summary["eval"]["success_before"] is None


def test_cli_defaults_are_the_modules() -> None:
    args = build_parser().parse_args(["sft", "--env", "graph_nav", "--out", "x"])
    assert (args.episodes, args.epochs, args.lr) == (sft.DEFAULT_EPISODES, sft.DEFAULT_EPOCHS, sft.DEFAULT_LR)


def test_the_experts_finish_every_demonstration_in_the_cli_default_budgets(model_and_chat) -> None:
    from agentrl.cli import _runner_config

    args = build_parser().parse_args(["sft", "--env", "graph_nav", "--out", "x"])
    compaction = CompactionConfig(strategy=args.compaction, keep_last_turns=args.keep_last,
                                  max_summary_tokens=args.max_summary_tokens)
    for looks in (True, False):
        demos = sft.demonstrations("graph_nav", {"size": "small", "expert_looks": looks}, sft.demo_seeds(16),
                                   model_and_chat[1], _runner_config(args, compaction))
        assert len(demos) == 16 and all(e.info["success"] for e in demos)
        assert any(e.num_compactions for e in demos)  # the windows are compacted, summaries and all


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--env", "no_such_env"], "no_such_env"),
        (["--env", "graph_nav", "--env-option", "colour=1"], "colour"),
        (["--env", "graph_nav", "--episodes", "0"], "episodes"),
        (["--env", "graph_nav", "--epochs", "0"], "epochs"),
        (["--env", "graph_nav", "--lr", "0"], "lr"),
        (["--env", "graph_nav", "--eval-episodes", "-1"], "eval_episodes"),
        (["--env", "graph_nav", "--heldout-demos", "-1"], "heldout_demos"),
        (["--env", "graph_nav", "--lr-schedule", "linear"], "lr_schedule"),
        (["--env", "graph_nav", "--warmup-steps", "-1"], "warmup_steps"),
        (["--env", "graph_nav", "--compaction", "bogus"], "strategy"),
        (["--env", "graph_nav", "--size", "huge"], "size"),
        (["--env", "graph_nav", "--model", "/no/such/model"], "/no/such/model"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys, argv, named) -> None:
    assert main(["sft", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("agentrl sft: error:") and named in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_non_empty_out(tmp_path: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("keep me")
    assert main(["sft", "--env", "graph_nav", "--out", str(tmp_path)]) == 2
    assert "out" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "keep me"


# ---- slow: SFT, then PPO -------------------------------------------------------------------------------

# graph_nav small with numbered exits and items and marked exits, the explorer's demonstrations, whole
# episodes in one window; PPO with 16 episodes per iteration, a faster critic and a failed-call penalty
GRAPH_NAV_PPO = ["env.options.numbered=true", "env.options.marked=true", "rollout.max_turns=24",
                 "rollout.context_budget=3072", "rollout.max_total_tokens=null",
                 "rollout.compaction.strategy=none", "optim.micro_batch_tokens=4096", "optim.actor_lr=3e-4",
                 "optim.critic_lr=1e-3", "ppo.kl_beta=0.05", "rollout.tool_error_penalty=0.05",
                 "rollout.tasks_per_iteration=16", "rollout.max_concurrent=16", "run.iterations=20",
                 "run.checkpoint_every=0", "model.device=cpu"]


@pytest.mark.slow
def test_sft_lifts_the_tiny_model_on_ledger_count(tmp_path: Path, capsys) -> None:
    """The warm start of docs/results.md's ledger comparison (about 2 minutes): from 0 to partial success."""
    out = tmp_path / "sft"
    assert main(["sft", "--env", "ledger", "--env-option", "num_records=5", "--env-option", "question=count",
                 "--compaction", "env", "--context-budget", "640", "--max-total-tokens", "2048",
                 "--max-compactions", "2", "--episodes", "512", "--epochs", "3", "--max-turns", "12",
                 "--eval-episodes", "64", "--out", str(out)]) == 0
    summary = json.loads((out / "sft.json").read_text())
    ev = summary["eval"]
    with capsys.disabled():
        print(f"\nledger count, 64 held-out episodes: untrained {ev['success_before']:.3f}  "
              f"SFT {ev['success_after']:.3f}")
    assert ev["success_after"] >= ev["success_before"] + 0.2  # measured 0 -> 0.359 (2 threads), 0.406 (1)
    assert summary["epochs"][-1]["heldout/nll/argument"] < 1.0  # it reads the next record's index


@pytest.fixture(scope="module")
def graph_nav_warm_start(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny model fine-tuned on graph_nav small, numbered and marked (about 13 minutes on one thread)."""
    out = tmp_path_factory.mktemp("graph_nav") / "sft"
    assert main(["sft", "--env", "graph_nav", *GRAPH_NAV, *GRAPH_NAV_SFT, "--out", str(out)]) == 0
    return out, json.loads((out / "sft.json").read_text())["eval"]


@pytest.mark.slow
def test_sft_lifts_the_tiny_model_on_graph_nav_small(graph_nav_warm_start, capsys) -> None:
    ev = graph_nav_warm_start[1]
    with capsys.disabled():
        print(f"\ngraph_nav small, numbered, marked, 64 held-out episodes: untrained "
              f"{ev['success_before']:.3f}  SFT {ev['success_after']:.3f}")
    assert ev["success_after"] >= ev["success_before"] + 0.2  # measured 0 -> 0.391


@pytest.mark.slow
def test_ppo_from_the_graph_nav_warm_start_raises_success(graph_nav_warm_start, tmp_path: Path,
                                                          capsys) -> None:
    """20 PPO iterations of 16 episodes (about 10 minutes) lift the warm start's held-out success; both
    are played under the PPO run's own rollout settings on the same 128 held-out seeds."""
    from agentrl.checkpoint import latest_checkpoint
    from agentrl.config import load_config
    from agentrl.train import train

    out, _ = graph_nav_warm_start
    cfg = load_config(ROOT / "examples" / "ppo_graph_nav.yaml",
                      [*GRAPH_NAV_PPO, f"model.path={out}", f"run.run_dir={tmp_path / 'ppo'}"])

    def success(model_dir: Path) -> float:
        policy, tokenizer = load_model(model_dir)
        return sft.evaluate(policy, ChatFormat(tokenizer), "graph_nav", dict(cfg.env.options),
                            sft.eval_seeds(128), cfg.to_runner_config()).metrics["success_rate"]

    before = success(out)
    train(cfg, progress=False)
    after = success(latest_checkpoint(tmp_path / "ppo") / "policy")
    with capsys.disabled():
        print(f"\ngraph_nav small, numbered, marked, 128 held-out episodes: SFT {before:.3f}  "
              f"SFT+PPO {after:.3f}")
    assert after >= before + 0.05  # measured 0.383 -> 0.508 and 0.469 (PPO seeds 0 and 3)
