"""`agentrl train` with `rollout.backend=vllm`: PPO and GRPO run, the engine gets every update, and a
resumed run repeats the uninterrupted one, as with the torch backend. Skipped without vLLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds an environment with it)")

from test_train import train  # noqa: E402

from agentrl.cli import main  # noqa: E402
from agentrl.metrics import read_metrics  # noqa: E402

pytestmark = pytest.mark.vllm
VLLM = ["rollout.backend=vllm", "rollout.vllm.max_model_len=2048", "rollout.vllm.cpu_kvcache_gib=1"]
GRAPH_NAV = ["rollout.max_turns=4", "rollout.tasks_per_iteration=2", "optim.micro_batch_tokens=2048"]


@pytest.mark.parametrize("config", ["ppo_graph_nav.yaml", "grpo_graph_nav.yaml"])
def test_ppo_and_grpo_train_on_graph_nav_through_vllm(tmp_path: Path, config: str) -> None:
    run = tmp_path / "run"
    assert train(run, config, "run.iterations=2", *VLLM, *GRAPH_NAV) == 0
    records = read_metrics(run)
    updated = [r for r in records if r.get("policy/loss") is not None]
    assert updated and all(math.isfinite(r["perf/weight_sync_s"]) for r in updated)
    assert all("perf/weight_sync_s" not in r for r in records if r.get("policy/loss") is None)


@pytest.mark.parametrize("config", ["ppo_arithmetic.yaml", "grpo_arithmetic.yaml"])
def test_a_resumed_vllm_run_repeats_the_uninterrupted_one(tmp_path: Path, config: str) -> None:
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train(whole, config, "run.iterations=3", *VLLM) == 0
    assert train(part, config, "run.iterations=2", *VLLM) == 0
    assert main(["train", "--resume", str(part), "--iterations", "3", "--quiet"]) == 0
    a, b = read_metrics(whole), read_metrics(part)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            if not key.startswith("perf/"):
                va, vb = ra[key], rb[key]
                assert (va is None and vb is None) or va == pytest.approx(vb, rel=1e-6, abs=1e-9), (
                    ra["iteration"], key)


def test_eval_with_the_vllm_backend_writes_the_torch_backends_greedy_episodes(tmp_path: Path,
                                                                               tiny_model_dir: Path) -> None:
    from agentrl.episodes import load_episodes

    common = ["eval", "--env", "graph_nav", "--env-option", "size=small", "--model", str(tiny_model_dir),
              "--episodes", "3", "--temperature", "0", "--context-budget", "1024", "--max-turns", "3"]
    assert main([*common, "--backend", "vllm", "--out", str(tmp_path / "vllm.jsonl")]) == 0
    assert main([*common, "--out", str(tmp_path / "torch.jsonl")]) == 0
    ours, theirs = load_episodes(tmp_path / "vllm.jsonl"), load_episodes(tmp_path / "torch.jsonl")
    assert len(ours) == 3
    assert [[s.token_ids for s in e.sub_traces] for e in ours] == [[s.token_ids for s in e.sub_traces]
                                                                  for e in theirs]


def test_sft_evaluates_the_fine_tuned_weights_on_the_vllm_engine(tmp_path: Path,
                                                                  tiny_model_dir: Path) -> None:
    # The engine starts on the starting weights; "after" is right only if the fine-tuned ones reach it
    # (measured: 0.0 before, 0.25 after, on both backends).
    common = ["sft", "--env", "arithmetic", "--env-option", "max_value=2", "--env-option", "operators=+",
              "--env-option", "num_operands=2", "--model", str(tiny_model_dir), "--episodes", "64",
              "--epochs", "3", "--eval-episodes", "16", "--heldout-demos", "0", "--temperature", "0",
              "--max-response-tokens", "8"]
    assert main([*common, "--backend", "vllm", "--out", str(tmp_path / "vllm")]) == 0
    assert main([*common, "--out", str(tmp_path / "torch")]) == 0
    ours, theirs = (json.loads((tmp_path / d / "sft.json").read_text())["eval"] for d in ("vllm", "torch"))
    assert ours == theirs
    assert ours["success_after"] > ours["success_before"]
