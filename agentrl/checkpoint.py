"""Checkpoints: the policy and critic as Hugging Face directories plus the trainer's state, saved atomically.

A checkpoint is ``RUN_DIR/checkpoints/iter_000123/`` (docs/design.md sections 8, 10)::

    policy/             save_pretrained of the policy and its tokenizer (loadable by transformers, vLLM)
    critic/             the critic's own save_pretrained (absent when there is no separate critic)
    trainer_state.pt    iteration, optimizer state dicts, RNG states, the trainer's extra state
    COMPLETE            written last: a directory without it is not a checkpoint

``RUN_DIR/checkpoints/latest`` names the newest checkpoint directory.

Retention (``run.keep_checkpoints``, ``run.keep_best``): after each save the trainer keeps the newest k
checkpoints and the one whose iteration scored best on a named metric (``best_checkpoint``), and
removes the others (``prune_checkpoints``).

How a save stays atomic: everything is written into ``iter_000123.tmp-<pid>`` next to the final
directory, every file is fsynced, ``COMPLETE`` is written and fsynced last, the directory is renamed to
its final name with ``os.replace`` (atomic within one filesystem), and only then is ``latest`` replaced
(written to a temporary file, fsynced, ``os.replace``d). A crash at any point leaves either the previous
checkpoint as the latest, or the new one complete: never a directory that looks complete but is not.
``latest_checkpoint`` trusts ``latest`` only when it names a directory with ``COMPLETE``, and otherwise
scans for the highest complete iteration; ``*.tmp-*`` leftovers are ignored, and removed by the next save.

``trainer_state.pt`` is read with ``torch.load(weights_only=True)``: ``extra`` must be plain data
(tensors, numbers, strings, bools, None, and lists, tuples and dicts of them), as optimizer state dicts
are. The RNG states are stored in that form too (numpy's key as a tensor).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
COMPLETE_MARKER = "COMPLETE"
POLICY_DIR = "policy"
CRITIC_DIR = "critic"
TRAINER_STATE_FILE = "trainer_state.pt"
FORMAT_VERSION = 1

_NAME_RE = re.compile(r"iter_(\d{6,})")
_TMP_RE = re.compile(r".+\.tmp-(\d+)(-.*)?")

# A random-number generator whose state a checkpoint can carry besides the global ones.
Generator = torch.Generator | np.random.Generator | random.Random


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete, or unreadable."""


@dataclass(frozen=True)
class TrainerState:
    """What ``trainer_state.pt`` holds besides the models.

    Attributes:
        iteration: the last iteration finished before the save; a resumed run goes on with the next.
        optimizers: optimizer ``state_dict``s by name (``policy``, ``critic``, ...).
        rng: the RNG states of ``capture_rng``, for ``restore_rng``.
        extra: the trainer's own state (data-order counters, schedulers, ...): plain data.
    """

    iteration: int
    optimizers: dict[str, Any]
    rng: dict[str, Any]
    extra: dict[str, Any]


def checkpoint_name(iteration: int) -> str:
    """The directory name of iteration ``iteration``'s checkpoint: ``iter_000123``."""
    if not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"iteration: expected an int >= 0, got {iteration!r}")
    return f"iter_{iteration:06d}"


def checkpoint_iteration(path: str | Path) -> int | None:
    """The iteration a checkpoint directory's name says, or None for any other name."""
    match = _NAME_RE.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished checkpoint: a checkpoint name and the ``COMPLETE`` marker."""
    p = Path(path)
    return checkpoint_iteration(p) is not None and (p / COMPLETE_MARKER).is_file()


# ----------------------------------------------------------------------------------------------------
# RNG states.


def capture_rng(generators: Mapping[str, Generator] | None = None) -> dict[str, Any]:
    """The states of Python's ``random``, numpy's global RNG, torch's CPU RNG, every CUDA device's RNG
    (when CUDA is initialised) and each of ``generators`` (by name), as plain data for a checkpoint."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_legacy_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: _generator_state(g) for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, Generator] | None = None) -> None:
    """Put every RNG back to ``state`` (from ``capture_rng``): the global ones, and each of
    ``generators`` from the state saved under its name. A generator the state does not have, or CUDA
    states for a different number of devices, raise ``CheckpointError``."""
    random.setstate(_as_tuples(state["python"]))
    _set_numpy_legacy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise CheckpointError(
                f"rng: the checkpoint has CUDA states for {len(state['cuda'])} devices, "
                f"this machine has {torch.cuda.device_count()}"
            )
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(f"rng: no saved state for generator {name!r} (saved: {sorted(saved)})")
        _set_generator_state(gen, saved[name])


def _numpy_legacy_state() -> dict[str, Any]:
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_legacy_state(s: Mapping[str, Any]) -> None:
    key = s["key"].numpy().astype(np.uint32)
    np.random.set_state((s["kind"], key, s["pos"], s["has_gauss"], s["gauss"]))


def _generator_state(gen: Generator) -> dict[str, Any]:
    if isinstance(gen, torch.Generator):
        return {"kind": "torch", "state": gen.get_state()}
    if isinstance(gen, np.random.Generator):
        # Plain data as long as the bit generator's state is (PCG64's is ints and strings).
        return {"kind": "numpy", "state": gen.bit_generator.state}
    if isinstance(gen, random.Random):
        return {"kind": "python", "state": gen.getstate()}
    raise TypeError(f"generators: expected torch, numpy or random generators, got {type(gen).__name__}")


def _set_generator_state(gen: Generator, saved: Mapping[str, Any]) -> None:
    kind = _generator_state(gen)["kind"]
    if saved["kind"] != kind:
        raise CheckpointError(f"rng: a {kind} generator cannot take a saved {saved['kind']} state")
    if isinstance(gen, torch.Generator):
        gen.set_state(saved["state"])
    elif isinstance(gen, np.random.Generator):
        gen.bit_generator.state = saved["state"]
    else:
        gen.setstate(_as_tuples(saved["state"]))


def _as_tuples(value: Any) -> Any:
    """Lists back to tuples, as ``random.setstate`` needs (a state may have passed through lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


# ----------------------------------------------------------------------------------------------------
# Saving.


def save_checkpoint(
    run_dir: str | Path,
    iteration: int,
    *,
    policy: Any,
    tokenizer: Any,
    critic: Any | None = None,
    optimizers: Mapping[str, Any],
    rng_state: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write iteration ``iteration``'s checkpoint under ``run_dir/checkpoints`` atomically; return its path.

    Args:
        policy: a transformers model (``save_pretrained``), written to ``policy/`` with ``tokenizer``.
        critic: anything with ``save_pretrained(directory)``, written to ``critic/``; None: no critic.
        optimizers: optimizer ``state_dict``s by name.
        rng_state: ``capture_rng(...)`` taken at the point the run resumes from.
        extra: the trainer's own state, plain data.
        keep_last: keep only this many checkpoints (the highest iterations, always this one); None: all.

    A checkpoint of the same iteration already there is replaced. Stale ``*.tmp-*`` directories of
    earlier failed saves are removed first.
    """
    name = checkpoint_name(iteration)
    if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"keep_last: expected null or an int >= 1, got {keep_last!r}")
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = root / f"{name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        _write_models(tmp, policy=policy, tokenizer=tokenizer, critic=critic)
        state = {"format_version": FORMAT_VERSION, "iteration": iteration, "optimizers": dict(optimizers),
                 "rng": dict(rng_state), "extra": dict(extra or {})}
        _write_trainer_state(tmp / TRAINER_STATE_FILE, state)
        _fsync_tree(tmp)
        _write_file(tmp / COMPLETE_MARKER, json.dumps({"iteration": iteration}) + "\n")
        _fsync_path(tmp)
        final = _move_into_place(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_file(root / f"{LATEST_FILE}.tmp-{os.getpid()}", name + "\n", replace=root / LATEST_FILE)
    if keep_last is not None:
        prune_checkpoints(run_dir, keep_last=keep_last)
    return final


def _write_models(out: Path, *, policy: Any, tokenizer: Any, critic: Any | None) -> None:
    policy.save_pretrained(out / POLICY_DIR)
    tokenizer.save_pretrained(out / POLICY_DIR)
    if critic is not None:
        critic.save_pretrained(out / CRITIC_DIR)


def _write_trainer_state(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, path)


def _move_into_place(tmp: Path, final: Path) -> Path:
    """``os.replace(tmp, final)``; an existing ``final`` is first renamed to a tmp name, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.tmp-{os.getpid()}-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_file(path: Path, text: str, *, replace: Path | None = None) -> None:
    """Write ``text`` to ``path`` and fsync it; with ``replace``, then ``os.replace`` it there."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if replace is not None:
        os.replace(path, replace)
        _fsync_path(replace.parent)


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entries; best effort where directories can't be
    opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            _fsync_path(Path(dirpath) / filename)
        _fsync_path(Path(dirpath))


def _remove_stale_tmp(root: Path) -> None:
    """Remove ``*.tmp-<pid>`` entries left by saves that died: this process's, or a dead process's."""
    for entry in root.iterdir():
        match = _TMP_RE.fullmatch(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another live process may be saving into this run right now
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or we cannot tell: leave its files alone
    return True


def prune_checkpoints(run_dir: str | Path, *, keep_last: int, also_keep: Iterable[Path] = ()) -> list[Path]:
    """Remove all but the ``keep_last`` highest-iteration complete checkpoints and those in
    ``also_keep``, never the latest one; return the removed paths. Each is first renamed to a
    ``*.tmp-*`` name (one atomic step, after which it is no checkpoint), then deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last: expected an int >= 1, got {keep_last}")
    latest = latest_checkpoint(run_dir)
    spared = {Path(p).resolve() for p in also_keep}
    others = [p for p in list_checkpoints(run_dir) if p != latest]
    keep = keep_last - 1 if latest is not None else keep_last
    doomed = [p for p in others[: max(len(others) - keep, 0)] if p.resolve() not in spared]
    for path in doomed:
        trash = path.with_name(f"{path.name}.tmp-{os.getpid()}-pruned")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def best_checkpoint(run_dir: str | Path, records: Iterable[Mapping[str, Any]], metric: str, *,
                    mode: str = "max") -> Path | None:
    """The complete checkpoint whose iteration's ``metric`` (in ``records``, ``metrics.jsonl``'s) is the
    highest (``mode="max"``) or lowest (``"min"``); the newest on a tie (as good, and trained longer);
    None when no checkpointed iteration has a finite value of it."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode: expected max or min, got {mode!r}")
    values = {r["iteration"]: r.get(metric) for r in records}
    best, best_value = None, None
    for path in list_checkpoints(run_dir):
        value = values.get(checkpoint_iteration(path))
        if value is None or value != value:  # not logged, or not finite (null / NaN)
            continue
        if best_value is None or (value >= best_value if mode == "max" else value <= best_value):
            best, best_value = path, value
    return best


# ----------------------------------------------------------------------------------------------------
# Finding and loading.


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, by increasing iteration."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: checkpoint_iteration(p) or 0)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a resumed run starts from: the one ``latest`` names if it is complete, else the
    complete checkpoint with the highest iteration; None when there is none."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    try:
        named = (root / LATEST_FILE).read_text().strip()
    except OSError:
        named = ""
    if named and _NAME_RE.fullmatch(named) and is_complete(root / named):
        return root / named
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(path: str | Path) -> TrainerState:
    """Read ``trainer_state.pt`` of the checkpoint directory ``path`` (tensors on the CPU; an optimizer's
    ``load_state_dict`` moves them to its parameters' device). Raises ``CheckpointError`` when ``path``
    is not a complete checkpoint or the file is unreadable."""
    p = Path(path)
    if not is_complete(p):
        raise CheckpointError(f"checkpoint {p} is missing or incomplete (no {COMPLETE_MARKER} marker)")
    try:
        state = torch.load(p / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()
        reason = first[0] if first else repr(err)
        raise CheckpointError(f"checkpoint {p}: unreadable {TRAINER_STATE_FILE} ({reason})") from err
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p}: format version {state.get('format_version')!r}, "
                              f"expected {FORMAT_VERSION}")
    return TrainerState(iteration=state["iteration"], optimizers=state["optimizers"], rng=state["rng"],
                        extra=state["extra"])
