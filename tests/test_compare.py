"""``agentrl compare`` and the ``run.max_env_steps`` budget: a tiny comparison through the real CLI whose
report.md is checked cell by cell against numbers recomputed here from the runs' own metrics.jsonl and
eval.json, the plots, a variant arm, a hand-computed report, and bad input as one line with exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agentrl.checkpoint import latest_checkpoint
from agentrl.cli import main
from agentrl.compare import Variant, parse_variant
from agentrl.config import load_config
from agentrl.report import success_auc, t_critical_95, write_report

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TINY = [  # 4 tasks x 2 = 8 one-turn arithmetic episodes per iteration for both algorithms
    "rollout.tasks_per_iteration=4", "rollout.group_size=2", "rollout.max_concurrent=8",
    "optim.micro_batch_tokens=256", "run.checkpoint_every=0",
]
VARIANT = "seq_mean:ppo.aggregation=seq-mean-token-mean"
BUDGET = 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _set(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _table(report: str, first_header: str) -> dict[tuple[str, ...], list[str]]:
    """The markdown table whose header starts with ``first_header``, as {(arm[, seed]): cells}."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header)
        key = (cells[0], cells[1]) if header[1] == "seed" else (cells[0],)
        rows[key] = cells
    return rows


def _close(cell: str, value: float, digits: int) -> None:
    """``cell`` is ``value`` printed with ``digits`` decimals (half a unit of the last place)."""
    assert abs(float(cell) - value) <= 0.5 * 10**-digits + 1e-9, (cell, value)


# ---- the budget in train ---------------------------------------------------------------------------------


def test_max_env_steps_stops_after_the_iteration_that_reaches_it_and_survives_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["train", "--config", str(EXAMPLES / "grpo_arithmetic.yaml"), "--run-dir", str(run), "--quiet"]
    # 8 one-turn episodes per iteration: 8, 16, 24 >= 20, so iteration 3 is the last of 10
    assert main([*base, *_set([*TINY, "run.iterations=10", "run.max_env_steps=20"])]) == 0
    records = _records(run)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert [r["rollout/env_steps"] for r in records] == [8.0, 16.0, 24.0]
    steps = [r["rollout/turns_mean"] * r["rollout/episodes"] for r in records]
    assert steps == [8.0, 8.0, 8.0]
    assert latest_checkpoint(run).name == "iter_000003"  # checkpoint_every=0: the budget's last iteration
    assert "perf/seconds_checkpoint" in records[-1]

    # resumed with the budget spent: nothing more; with a larger one: on from the counted 24 steps
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert len(_records(run)) == 3
    assert main(["train", "--resume", str(run), "--set", "run.max_env_steps=40", "--quiet"]) == 0
    assert [r["rollout/env_steps"] for r in _records(run)] == [8.0, 16.0, 24.0, 32.0, 40.0]
    assert latest_checkpoint(run).name == "iter_000005"


# ---- a tiny comparison through the CLI -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 algorithms x 2 seeds and a PPO variant, 32 environment steps each, 8 held-out episodes."""
    out = tmp_path_factory.mktemp("compare") / "out"
    argv = ["compare", "--env", "arithmetic", "--algos", "ppo,grpo", "--seeds", "2", "--budget", str(BUDGET),
            "--config-dir", str(EXAMPLES), *_set(TINY), "--variant", VARIANT, "--eval-episodes", "8",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return out


def _expected_run(run_dir: Path) -> dict[str, float]:
    """One run's numbers, recomputed from its files with the report's definitions."""
    records, ev = _records(run_dir), json.loads((run_dir / "eval.json").read_text())
    area, before = 0.0, 0.0
    for r in records:
        cut = min(r["rollout/env_steps"], BUDGET)
        area += r["rollout/success_rate"] * (cut - before)
        before = cut
    seconds = [sum(v for k, v in r.items() if k.startswith("perf/seconds_")) for r in records]
    learner = [sum(r.get(f"perf/seconds_{p}", 0.0) for p in ("advantages", "critic", "policy"))
               for r in records]
    episodes = sum(r["rollout/episodes"] for r in records)
    return {
        "success": ev["success_rate"], "reward": ev["reward_mean"], "auc": area / BUDGET,
        "env_steps": records[-1]["rollout/env_steps"], "iterations": len(records),
        "tokens": sum(r["rollout/policy_tokens"] for r in records), "wall": sum(seconds),
        "learner": sum(learner) / len(learner), "memory": max(r["perf/peak_memory_mb"] for r in records),
        "sub_traces": sum(r["rollout/sub_traces_mean"] * r["rollout/episodes"] for r in records) / episodes,
    }


def test_report_table_matches_the_runs_own_files(tiny_compare: Path) -> None:
    report = (tiny_compare / "report.md").read_text()
    arms = _table(report, "| arm | runs |")
    assert list(arms) == [("ppo",), ("grpo",), ("ppo+seq_mean",)]
    runs = _table(report, "| arm | seed |")
    for (arm,), cells in arms.items():
        per_seed = [_expected_run(tiny_compare / arm / f"seed_{k}") for k in (0, 1)]
        mean = {key: sum(e[key] for e in per_seed) / 2 for key in per_seed[0]}
        s = [e["success"] for e in per_seed]
        half = 12.7062 * abs(s[0] - s[1]) / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(2)
        success, ci = cells[2].split(" ± ")
        assert cells[1] == "2"
        _close(success, mean["success"], 3)
        _close(ci, half, 3)
        for cell, key, digits in zip(cells[3:9], ("auc", "env_steps", "iterations", "tokens", "wall",
                                                   "learner"), (3, 1, 1, 1, 1, 3), strict=True):
            _close(cell, mean[key], digits)
        _close(cells[9], max(e["memory"] for e in per_seed), 0)
        _close(cells[10], mean["sub_traces"], 2)
        assert mean["env_steps"] >= BUDGET
        for k, e in enumerate(per_seed):
            row = runs[(arm, str(k))]
            for cell, key, digits in zip(row[2:], ("success", "reward", "auc", "env_steps", "iterations",
                                                   "tokens", "wall", "learner", "memory", "sub_traces"),
                                         (3, 3, 3, 0, 0, 0, 1, 3, 0, 2), strict=True):
                _close(cell, e[key], digits)
    assert "agentrl compare --env arithmetic" in report


def test_every_run_starts_from_one_model_with_its_seed_and_the_budget(tiny_compare: Path) -> None:
    for arm in ("ppo", "grpo", "ppo+seq_mean"):
        for k in (0, 1):
            run_dir = tiny_compare / arm / f"seed_{k}"
            cfg = load_config(run_dir / "config.yaml")
            assert Path(cfg.model.path) == tiny_compare / "initial_model"
            assert (cfg.run.seed, cfg.run.max_env_steps, cfg.algorithm) == (k, BUDGET, arm.split("+")[0])
            assert cfg.ppo.aggregation == ("seq-mean-token-mean" if arm == "ppo+seq_mean" else "token-mean")
            ev = json.loads((run_dir / "eval.json").read_text())
            assert ev["episodes"] == 8 and ev["task_seeds"] == [10**9, 10**9 + 7]
    assert not (tiny_compare / "grpo+seq_mean").exists()  # a ppo.* variant makes a PPO arm only


def test_plots_are_png_files(tiny_compare: Path) -> None:
    import matplotlib.image

    for name in ("success_vs_env_steps.png", "success_vs_wall_time.png"):
        path = tiny_compare / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(path).ndim == 3
        assert f"]({name})" in (tiny_compare / "report.md").read_text()


def test_rerun_reuses_finished_runs_and_rewrites_the_same_table(tiny_compare: Path, capsys) -> None:
    before = (tiny_compare / "report.md").read_text()
    metrics = (tiny_compare / "ppo" / "seed_0" / "metrics.jsonl").read_text()
    argv = ["compare", "--env", "arithmetic", "--seeds", "2", "--budget", str(BUDGET), "--config-dir",
            str(EXAMPLES), *_set(TINY), "--variant", VARIANT, "--eval-episodes", "8",
            "--out", str(tiny_compare), "--quiet"]
    assert main(argv) == 0
    assert (tiny_compare / "report.md").read_text() == before
    assert (tiny_compare / "ppo" / "seed_0" / "metrics.jsonl").read_text() == metrics
    assert main([*argv, "--set", "optim.actor_lr=0.5"]) == 2  # another config in the same --out
    assert "holds a run of another config" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "named"), [
    (["--variant", "nocolon"], "--variant: expected NAME:key=value"),
    (["--variant", "x:"], "--variant: expected NAME:key=value"),
    (["--variant", ":ppo.gamma=1"], "--variant: expected NAME:key=value"),
    (["--variant", "x:ppo.gamma"], "--variant: expected NAME:key=value"),
    (["--variant", "x:ppo.nope=1"], "arm ppo+x: unknown key 'ppo.nope'"),
    (["--algos", "grpo", "--variant", "x:ppo.gamma=1"], "--variant x: its keys are for none"),
    (["--algos", "ppo,dqn"], "--algos: unknown algorithm 'dqn' (known: ppo, grpo)"),
    (["--algos", "ppo,ppo"], "--algos: expected distinct algorithms"),
    (["--seeds", "0"], "--seeds: expected an int >= 1"),
    (["--budget", "0"], "--budget: expected an int >= 1"),
    (["--eval-episodes", "0"], "--eval-episodes: expected an int >= 1"),
    (["--set", "ppo.clip_high=-1"], "ppo.clip_high"),
    (["--model", "/nonexistent/model"], "--model: /nonexistent/model is not a model directory"),
])
def test_bad_input_is_one_line_exit_2_before_anything_trains(tmp_path: Path, capsys, extra, named) -> None:
    out = tmp_path / "out"
    argv = ["compare", "--env", "arithmetic", "--config-dir", str(EXAMPLES), "--out", str(out), "--quiet"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("agentrl compare: error: ") and named in err, err
    assert not out.exists()


def test_unknown_env_has_no_config(tmp_path: Path, capsys) -> None:
    argv = ["compare", "--env", "nope", "--config-dir", str(EXAMPLES), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--config-dir: no " in capsys.readouterr().err


# ---- the pieces, by hand ---------------------------------------------------------------------------------


def test_parse_variant_and_which_algorithms_it_makes_arms_of() -> None:
    v = parse_variant("betas:optim.betas=[0.9,0.95],ppo.epochs=2")
    assert v == Variant("betas", ("optim.betas=[0.9,0.95]", "ppo.epochs=2"))
    assert v.applies_to("ppo") and not v.applies_to("grpo")
    both = parse_variant("agg:ppo.aggregation=seq-mean-token-mean,grpo.aggregation=seq-mean-token-mean")
    assert both.applies_to("ppo") and both.applies_to("grpo")
    keep = parse_variant("keep:rollout.compaction.strategy=keep_last")
    assert keep.applies_to("ppo") and keep.applies_to("grpo")


def test_t_quantiles() -> None:
    # tables of Student's t, 0.975: df 1, 2, 30; beyond 30 the expansion: 40, 60, 120, 1000
    for df, t in ((1, 12.7062), (2, 4.3027), (30, 2.0423), (40, 2.0211), (60, 2.0003), (120, 1.9799),
                  (1000, 1.9623)):
        assert t_critical_95(df) == pytest.approx(t, abs=2e-4), df


def test_success_auc_by_hand() -> None:
    records = [{"rollout/env_steps": 8.0, "rollout/success_rate": 0.0},
               {"rollout/env_steps": 16.0, "rollout/success_rate": 0.5},
               {"rollout/env_steps": 24.0, "rollout/success_rate": 1.0}]
    # budget 20: 0 * 8 + 0.5 * 8 + 1.0 * (20 - 16) = 8, / 20
    assert success_auc(records, 20) == pytest.approx(0.4)
    # no budget: 0 * 8 + 0.5 * 8 + 1.0 * 8 = 12, / 24
    assert success_auc(records, None) == pytest.approx(0.5)


def _fake_run(run_dir: Path, successes: list[float], heldout: float, memory: float) -> Path:
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"iteration": i + 1, "rollout/env_steps": 10.0 * (i + 1), "rollout/episodes": 5.0,
                         "rollout/success_rate": s, "rollout/policy_tokens": 100.0,
                         "rollout/sub_traces_mean": 1.0 + i, "perf/seconds_rollout": 2.0,
                         "perf/seconds_advantages": 0.25, "perf/seconds_policy": 0.5,
                         "perf/peak_memory_mb": memory - i})
             for i, s in enumerate(successes)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    ev = {"episodes": 10, "success_rate": heldout, "reward_mean": 0.0}
    (run_dir / "eval.json").write_text(json.dumps(ev))
    return run_dir


def test_report_by_hand(tmp_path: Path) -> None:
    runs = {"a": [(k, _fake_run(tmp_path / "a" / f"seed_{k}", [0.0, 1.0], h, 100.0 + k))
                  for k, h in enumerate((0.2, 0.4, 0.6))],
            "b": [(0, _fake_run(tmp_path / "b" / "seed_0", [0.5, 0.5], 0.7, 50.0))]}
    text = write_report(tmp_path, runs, budget=15, intro="# t", commands=["agentrl compare ..."]).read_text()
    rows = _table(text, "| arm | runs |")
    # a: held-out 0.2, 0.4, 0.6: mean 0.4, sd 0.2, CI 4.3027 * 0.2 / sqrt(3) = 0.4968;
    # AUC over budget 15: (0 * 10 + 1 * 5) / 15 = 0.333; two iterations of 2.75 s; learner 0.75 s;
    # peak max(100, 101, 102) = 102; sub-traces (1 * 5 + 2 * 5) / 10 = 1.5
    assert rows[("a",)] == ["a", "3", "0.400 ± 0.497", "0.333", "20", "2", "200", "5.5", "0.750",
                            "102", "1.50"]
    # b: one seed, no interval; AUC (0.5 * 10 + 0.5 * 5) / 15 = 0.5
    assert rows[("b",)] == ["b", "1", "0.700 ± n/a", "0.500", "20", "2", "200", "5.5", "0.750", "50",
                            "1.50"]
    assert "**a against b**: no test at n = 3 and 1 (a 0.400 against b 0.700); run 2 or more seeds" in text
    assert "the wall-time plot stops where the arm's fastest seed finished" in text
    assert (tmp_path / "success_vs_env_steps.png").read_bytes()[:8] == PNG_MAGIC


def test_student_t_tail_agrees_with_the_quantile_table() -> None:
    from agentrl.significance import t_sf2

    for df in range(1, 40):  # P(|T| >= t(0.975, df)) = 0.05; the table has 4 decimals
        assert t_sf2(t_critical_95(df), df) == pytest.approx(0.05, abs=2e-5)
    assert t_sf2(0.0, 3) == 1.0
    assert t_sf2(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| >= 1) = 1/2


def test_welch_verdict_by_hand() -> None:
    from agentrl.significance import verdict, welch_t_test

    # a = 0.2, 0.4, 0.6: mean 0.4, var 0.04, var of mean 0.04/3; b = 0.1, 0.15, 0.2: mean 0.15, var 0.0025,
    # var of mean 0.0025/3. t = 0.25 / sqrt(0.0425/3) = 2.1004; df = (0.0425/3)^2 /
    # ((0.04/3)^2/2 + (0.0025/3)^2/2) = 2.2490
    r = welch_t_test([0.2, 0.4, 0.6], [0.1, 0.15, 0.2])
    assert r is not None and r.t == pytest.approx(2.1004, abs=1e-4)
    assert r.df == pytest.approx(2.2490, abs=1e-4)
    assert 0.1 < r.p < 0.2
    assert verdict("ppo", [0.2, 0.4, 0.6], "grpo", [0.1, 0.15, 0.2], what="held-out success") == (
        f"**ppo against grpo**: no significant difference in held-out success at n = 3 (ppo 0.400 against "
        f"grpo 0.150; Welch's t-test p = {r.p:.3g} >= 0.05).")
    strong = verdict("ppo", [0.8, 0.85, 0.9], "grpo", [0.1, 0.15, 0.2], what="held-out success")
    assert strong.startswith(
        "**ppo against grpo**: ppo has the higher held-out success, significant at n = 3")
    flat = verdict("ppo", [0.0, 0.0], "grpo", [0.0, 0.0], what="held-out success")
    assert "gave the same held-out success" in flat and "no Welch's t-test" in flat


def test_env_names_a_setting_without_config_files_and_replaces_the_env_with_them(tmp_path: Path) -> None:
    from agentrl.compare import plan

    common = dict(seeds=1, budget=8, out=tmp_path, model=None, overrides=[], variants=[])
    # --env ledger_long finds <algo>_ledger_long.yaml, whose environment is ledger with 48 records
    p = plan("ledger_long", algos=["ppo", "grpo"], config_dir=EXAMPLES, **common)
    for _, cfg in (run for runs in p.runs.values() for run in runs):
        assert cfg.env.name == "ledger" and cfg.env.options["num_records"] == 48
    # with --config files, --env replaces their environment and drops its options (graph_nav's size)
    p = plan("arithmetic", algos=None, config_dir=None, configs=[EXAMPLES / "ppo_graph_nav.yaml"],
             env_options=["max_value=2"], **common)
    ((_, cfg),) = p.runs["ppo"]
    assert cfg.env.name == "arithmetic" and dict(cfg.env.options) == {"max_value": 2}


def test_the_reproduce_command_of_a_setting_names_its_config_dir_not_its_files(tmp_path: Path) -> None:
    from agentrl.compare import command_line

    line = command_line("ledger_long", algos=["ppo"], seeds=1, budget=8, out=tmp_path, model=None, configs=[],
                        env_options=[], overrides=[], variants=[], eval_episodes=4, config_dir=EXAMPLES)
    assert "--env ledger_long --algos ppo" in line and f"--config-dir {EXAMPLES}" in line
    assert "--config " not in line  # with a --config file, --env would replace the setting's environment
