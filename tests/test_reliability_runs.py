"""No fault loses data, and an expected failure is one line with exit code 2 (docs/reliability.md).

Kills are simulated in process: the function that would have run next raises ``KeyboardInterrupt``
(which no ``except Exception`` catches), so the run directory is left exactly as a SIGKILL at that
moment leaves it. Each resumed run is compared, record by record, with one that was never stopped.
Each test here failed before its fix.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from agentrl import checkpoint as checkpoint_module
from agentrl import train as train_module
from agentrl.checkpoint import CHECKPOINTS_DIR, latest_checkpoint, list_checkpoints
from agentrl.cli import main
from agentrl.guards import GROWTH_LIMIT, largest_weight
from agentrl.metrics import MetricsLogger, read_metrics
from agentrl.models import load_model

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "examples" / "grpo_arithmetic.yaml")
TINY = ["rollout.tasks_per_iteration=2", "rollout.group_size=2", "rollout.max_concurrent=4",
        "optim.micro_batch_tokens=256", "run.checkpoint_every=1"]


def train(run: Path, *extra: str) -> int:
    args = ["train", "--config", CONFIG, "--run-dir", str(run), "--quiet"]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return main(args)


def resume(run: Path, iterations: int = 3) -> int:
    return main(["train", "--resume", str(run), "--iterations", str(iterations), "--quiet"])


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The records of an uninterrupted 3-iteration run, to compare every resumed run with."""
    run = tmp_path_factory.mktemp("whole") / "run"
    assert train(run, "run.iterations=3") == 0
    return read_metrics(run)


def same_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in set(ra) | set(rb):
            if key.startswith("perf/"):
                continue  # timings differ by nature (a restored record has no checkpoint time)
            assert ra.get(key) == pytest.approx(rb.get(key), rel=1e-6, abs=1e-9), (ra["iteration"], key)


def kill_at(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, *, call: int) -> None:
    """Make the ``call``-th call of ``target.name`` raise KeyboardInterrupt (a kill at that moment)."""
    real, calls = getattr(target, name), []

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, dying)


def one_error_line(capsys: pytest.CaptureFixture[str], *named: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("agentrl ") and ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in named:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ---- 4. a kill before the first checkpoint --------------------------------------------------------


def test_a_run_killed_before_its_first_checkpoint_resumes_or_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = [tmp_path / "resumed", tmp_path / "restarted"]
    for run in runs:
        with monkeypatch.context() as m:
            kill_at(m, train_module, "run_iteration", call=1)
            with pytest.raises(KeyboardInterrupt):
                train(run, "run.iterations=3")
            assert (run / "metrics.jsonl").is_file() and not list_checkpoints(run)  # the stuck state
    assert resume(runs[0]) == 0  # was: "has no complete checkpoint"
    assert "starting it from iteration 0" in capsys.readouterr().err
    assert train(runs[1], "run.iterations=3") == 0  # was: "already holds a run"
    for run in runs:
        same_records(read_metrics(run), whole)


# ---- 5. a kill between the checkpoint and the metrics record --------------------------------------


def test_a_kill_between_checkpoint_and_record_loses_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: list[dict[str, Any]]
) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        kill_at(m, MetricsLogger, "log", call=2)  # iteration 2 is checkpointed, then the kill
        with pytest.raises(KeyboardInterrupt):
            train(run, "run.iterations=3")
    assert latest_checkpoint(run).name == "iter_000002" and len(read_metrics(run)) == 1
    assert resume(run) == 0
    records = read_metrics(run)
    same_records(records, whole)  # rollout/env_steps included: it used to stay low for the whole run
    assert records[1]["rollout/env_steps"] == whole[1]["rollout/env_steps"] > 0


# ---- 6. a corrupt latest checkpoint ---------------------------------------------------------------


@pytest.mark.parametrize("damaged", ["policy/model.safetensors", "trainer_state.pt"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, damaged: str, whole: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(run, "run.iterations=2") == 0
    target = latest_checkpoint(run) / damaged
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])  # a truncated file
    capsys.readouterr()
    assert resume(run) == 0
    err = capsys.readouterr().err
    assert "checkpoint iter_000002 is unreadable" in err and "resuming from iter_000001" in err
    same_records(read_metrics(run), whole)


def test_no_readable_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train(run, "run.iterations=1") == 0
    (latest_checkpoint(run) / "trainer_state.pt").write_bytes(b"junk")
    assert resume(run) == 2
    one_error_line(capsys, "no checkpoint", "readable")


# ---- 7. a diverged update ---------------------------------------------------------------------------


def test_a_diverged_update_is_not_checkpointed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train(run, "run.iterations=3", "optim.actor_lr=1e10") == 2
    line = one_error_line(capsys, "diverged", "not checkpointed", "optim.actor_lr")
    assert "iteration " in line
    start = largest_weight(load_model(run / "initial_model")[0])
    for path in list_checkpoints(run):  # whatever was checkpointed is sane; resuming cannot reload 1e9
        assert largest_weight(load_model(path / "policy")[0]) <= GROWTH_LIMIT * max(start, 1.0), path


# ---- 8. eval --out is checked before the evaluation ----------------------------------------------


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_eval_checks_out_before_it_runs(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tiny_model_dir: Path,
) -> None:
    import agentrl.models

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded: the evaluation ran before --out was checked")

    monkeypatch.setattr(agentrl.models, "load_model", no_load)
    (tmp_path / "file").write_text("x")
    out = tmp_path if where == "a directory" else tmp_path / "file" / "e.jsonl"
    assert main(["eval", "--env", "arithmetic", "--model", str(tiny_model_dir), "--out", str(out)]) == 2
    one_error_line(capsys, "--out", str(out))


# ---- 9. expected failures are one line, exit 2 ----------------------------------------------------


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_run_dir_that_is_or_is_under_a_file(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    run = tmp_path / "file" if where == "a file" else tmp_path / "file" / "run"
    assert train(run, "run.iterations=1") == 2
    one_error_line(capsys, "run.run_dir", "file")


def test_a_refused_write_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_model_dir: Path
) -> None:
    # As root, chmod cannot make a directory read-only; the OS's refusal is simulated where it lands.
    run = tmp_path / "run"
    assert train(run, "run.iterations=1") == 0

    def refused(cfg: Any, path: Path) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(train_module, "save_config", refused)
    assert train(tmp_path / "fresh", "run.iterations=1") == 2
    one_error_line(capsys, "config.yaml", "read-only")
    assert resume(run, 2) == 2
    one_error_line(capsys, "config.yaml", "read-only")
    monkeypatch.setattr("agentrl.outputs.os.access", lambda *a, **k: False)
    assert main(["eval", "--env", "arithmetic", "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "e.jsonl")]) == 2
    one_error_line(capsys, "--out", "not writable")


def test_a_full_disk_is_one_line_and_the_resume_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, real, calls = tmp_path / "run", checkpoint_module._write_trainer_state, []

    def full(path: Path, state: dict[str, Any]) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, state)

    with monkeypatch.context() as m:
        m.setattr(checkpoint_module, "_write_trainer_state", full)
        assert train(run, "run.iterations=3") == 2
    one_error_line(capsys, "no space left", "--resume")
    assert [p.name for p in (run / CHECKPOINTS_DIR).iterdir() if ".tmp-" in p.name] == []
    assert resume(run) == 0
    same_records(read_metrics(run), whole)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(tmp_path / "run", "run.iterations=1", "model.device=cuda") == 2
    one_error_line(capsys, "model.device", "cuda")


class Pickled:
    """Not a tensor: transformers' weights_only load refuses a pickle holding it."""


@pytest.mark.parametrize("damage", ["truncated safetensors", "pickled bin only"])
def test_a_broken_model_directory_is_one_line(
    tmp_path: Path, damage: str, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    if damage == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
        torch.save({"model.embed_tokens.weight": Pickled()}, model / "pytorch_model.bin")
    out = str(tmp_path / "e.jsonl")
    assert main(["eval", "--env", "arithmetic", "--model", str(model), "--out", out]) == 2
    one_error_line(capsys, str(model))


@pytest.mark.parametrize(("override", "field"), [
    ("run.seed=100000000000000000000", "run.seed"),
    ("rollout.tasks_per_iteration=1000000000000", "rollout.tasks_per_iteration"),
])
def test_absurd_config_numbers_name_their_field(
    tmp_path: Path, override: str, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(tmp_path / "run", "run.iterations=1", override) == 2
    one_error_line(capsys, field)


def test_init_model_refuses_an_absurd_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the tokenizer library used to abort the whole process (this test's too)
    assert main(["init-model", "--out", str(tmp_path / "m"), "--vocab-size", "100000000000"]) == 2
    one_error_line(capsys, "vocab_size")
