"""What ``agentrl view`` reads: the runs under a directory, an index of their episodes, one episode at a time.

A **run** is a directory with ``episodes/iter_<N>.jsonl`` (written by ``agentrl train``); a ``compare``
output holds runs at ``<arm>/seed_<k>/``. ``open_source`` finds them and fails with a one-line
``ValueError`` when there is nothing to show (not a directory, no run, no episode). ``Source.index`` reads
every episode file once and keeps, per episode, a short summary and the byte offset and length of its
line, so ``Source.episode`` later reads exactly one line: a page never parses a large file whole. A line
that is not an episode record (a truncated write, say) stays in the index with its error, which the page
shows in place of the episode.

Per-token text comes from the tokenizer the run saved (``initial_model/`` or a checkpoint's ``policy/``);
a run without one shows token ids only. The fields a token can be coloured by are the per-token lists the
run wrote (``advantages``, ``values``, ``returns``, ``logprobs``, ``rewards``, anything else of the right
length such as ``entropy``) plus ``log_ratio`` = logprobs - ref_logprobs where the reference's were written.

This module imports no torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentrl.compaction import SUMMARY_HEADER, SUMMARY_REQUEST
from agentrl.types import Episode

EPISODES_DIR = "episodes"
EPISODE_FILE = re.compile(r"iter_(\d+)\.jsonl$")
NOT_FIELDS = ("token_ids", "loss_mask")  # per-token lists that are not colourable numbers
FIELD_ORDER = ("advantages", "values", "returns", "log_ratio", "entropy", "logprobs", "rewards")


@dataclass(frozen=True)
class Run:
    """One training run: its directory, its name under the viewed directory, its arm and seed."""

    path: Path
    name: str  # "." for a single run, "ppo/seed_0" in a compare output
    arm: str
    seed: str
    algorithm: str


@dataclass
class Source:
    """The runs under one directory and, once ``index()`` ran, every episode's summary and location."""

    root: Path
    runs: list[Run]
    entries: list[dict[str, Any]] = field(default_factory=list)
    _locations: list[tuple[Path, int, int]] = field(default_factory=list)
    _decoders: dict[Path, Callable[[int], str] | None] = field(default_factory=dict)

    def index(self) -> dict[str, Any]:
        """The page's index: the runs and one summary per episode (``id`` is its position)."""
        if not self.entries:
            for run in self.runs:
                for path in episode_files(run.path):
                    self._index_file(run, path)
        return {"root": str(self.root), "runs": [_run_dict(r) for r in self.runs], "episodes": self.entries}

    def _index_file(self, run: Run, path: Path) -> None:
        iteration = int(EPISODE_FILE.search(path.name).group(1))  # type: ignore[union-attr]
        offset = 0
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                entry: dict[str, Any] = {"id": len(self.entries), "run": run.name, "arm": run.arm,
                                         "seed": run.seed, "iteration": iteration, "line": number,
                                         "file": str(path.relative_to(self.root))}
                try:
                    entry |= fast_summary(raw) or summary(json.loads(raw))
                except (ValueError, KeyError, TypeError) as e:
                    why = f"{type(e).__name__}: {e}"
                    entry["error"] = f"{entry['file']}:{number}: not an episode record ({why})"
                self.entries.append(entry)
                self._locations.append((path, start, len(raw)))

    def episode(self, episode_id: int) -> dict[str, Any]:
        """One episode, ready for the page (``episode_view``); ValueError naming the line when it is not
        an episode record or its file changed or went away since the index was made."""
        self.index()
        if not 0 <= episode_id < len(self.entries):
            raise ValueError(f"episode {episode_id}: no such episode (the index has {len(self.entries)})")
        entry = self.entries[episode_id]
        path, start, length = self._locations[episode_id]
        where = f"{entry['file']}:{entry['line']}"
        try:
            with path.open("rb") as f:
                f.seek(start)
                raw = f.read(length)
            record = json.loads(raw)
            Episode.from_dict(record)  # validates the token-level fields
        except OSError as e:
            raise ValueError(f"{where}: cannot read the episode file ({e.strerror or e})") from e
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where}: not an episode record ({type(e).__name__}: {e})") from e
        run = next(r for r in self.runs if r.name == entry["run"])
        return {"entry": entry, **episode_view(record, self._decoder(run), summary_request(run.path))}

    def _decoder(self, run: Run) -> Callable[[int], str] | None:
        if run.path not in self._decoders:
            self._decoders[run.path] = token_decoder(run.path, self.root)
        return self._decoders[run.path]


# ---- finding runs ---------------------------------------------------------------------------------------


def episode_files(run_dir: Path) -> list[Path]:
    """A run's episode files, in iteration order."""
    d = run_dir / EPISODES_DIR
    files = [p for p in d.iterdir() if EPISODE_FILE.search(p.name)] if d.is_dir() else []
    return sorted(files, key=lambda p: int(EPISODE_FILE.search(p.name).group(1)))  # type: ignore[union-attr]


def _is_run(path: Path) -> bool:
    return (path / EPISODES_DIR).is_dir() or (path / "metrics.jsonl").is_file()


def find_runs(root: Path) -> list[Run]:
    """The run at ``root``, or the runs one or two levels below it (a ``compare`` output's
    ``<arm>/seed_<k>/``), in name order."""
    if _is_run(root):
        return [_run(root, root)]
    found = [p for p in sorted(root.glob("*")) + sorted(root.glob("*/*")) if p.is_dir() and _is_run(p)]
    return [_run(p, root) for p in found]


def _run(path: Path, root: Path) -> Run:
    rel = path.relative_to(root)
    parts = rel.parts
    algorithm = ""
    config = path / "config.yaml"
    if config.is_file():
        try:
            algorithm = str((yaml.safe_load(config.read_text()) or {}).get("algorithm", ""))
        except (yaml.YAMLError, AttributeError):
            algorithm = ""
    arm = parts[0] if parts else (algorithm or path.name)
    seed = parts[1] if len(parts) > 1 else ""
    return Run(path=path, name=str(rel) if parts else ".", arm=arm, seed=seed, algorithm=algorithm)


def _run_dict(run: Run) -> dict[str, str]:
    return {"name": run.name, "arm": run.arm, "seed": run.seed, "algorithm": run.algorithm}


def open_source(path: str | Path) -> Source:
    """The runs under ``path`` with their episodes indexed; ValueError (one line) when there is nothing
    to show: not a directory, no run under it, or runs that wrote no episode yet."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"RUN_DIR: {root} is not a directory")
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"RUN_DIR: {root} is not a run (no {EPISODES_DIR}/ or metrics.jsonl) "
                         "nor a compare output (<arm>/seed_<k>/ runs)")
    source = Source(root=root, runs=runs)
    if not source.index()["episodes"]:
        raise ValueError(f"RUN_DIR: {root} holds {len(runs)} run(s) but no episodes "
                         f"({EPISODES_DIR}/iter_<N>.jsonl is missing or empty)")
    return source


# ---- one episode ----------------------------------------------------------------------------------------


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The index's facts about one episode record (KeyError/TypeError when it is not one)."""
    subs = record["sub_traces"]
    if not isinstance(subs, list) or not subs:
        raise ValueError("sub_traces: expected a non-empty list")
    info = record.get("info") or {}
    return {
        "task_id": str(record["task_id"]),
        "group_id": str(record["group_id"]),
        "end": record["end"],
        "reason": record.get("truncation_reason") or record["end"],
        "success": bool(info.get("success", False)),
        "reward": float(sum(sum(s["rewards"]) for s in subs)),
        "sub_traces": len(subs),
        "tokens": sum(len(s["token_ids"]) for s in subs),
        "policy_tokens": sum(sum(s["loss_mask"]) for s in subs),
        "turns": int(record.get("num_turns", 0)),
    }


SUB_TRACES = b', "sub_traces": ['
LISTS = {name: b'"' + name.encode() + b'": [' for name in ("token_ids", "loss_mask", "rewards")}


def fast_summary(raw: bytes) -> dict[str, Any] | None:
    """``summary`` of a line as ``save_episodes`` writes it (``sub_traces`` last, ``json.dumps``'
    separators) without parsing its token lists: the head is parsed, the lists are counted. None when the
    line has another layout or is cut short, so the caller parses it whole (and names its error)."""
    cut = raw.find(SUB_TRACES)
    if cut < 0 or not raw.rstrip().endswith(b"}]}"):
        return None
    head = json.loads(raw[:cut] + b"}")
    subs = [_list_span(raw, name, cut) for name in LISTS]
    if not subs[0] or not len(subs[0]) == len(subs[1]) == len(subs[2]):
        return None
    tokens = sum(raw.count(b",", a, b) + 1 for a, b in subs[0])
    ones = sum(raw.count(b"1", a, b) for a, b in subs[1])
    reward = sum(sum(json.loads(raw[a - 1 : b + 1])) for a, b in subs[2])
    record = head | {"sub_traces": [{"rewards": [reward], "token_ids": [], "loss_mask": []}]}
    return summary(record) | {"sub_traces": len(subs[0]), "tokens": tokens, "policy_tokens": ones}


def _list_span(raw: bytes, name: str, start: int) -> list[tuple[int, int]]:
    """(first, end) byte offsets of the inside of every ``"name": [...]`` list after ``start``."""
    key, out = LISTS[name], []
    at = raw.find(key, start)
    while at >= 0:
        first = at + len(key)
        end = raw.find(b"]", first)
        out.append((first, end))
        at = raw.find(key, end)
    return out


def token_fields(sub: dict[str, Any]) -> dict[str, list[float | None]]:
    """The per-token numeric fields of one sub-trace record, plus ``log_ratio`` (policy minus reference
    log-prob at policy tokens) when ``ref_logprobs`` were written."""
    n = len(sub["token_ids"])
    fields = {name: value for name, value in sub.items() if name not in NOT_FIELDS and isinstance(value, list)
              and len(value) == n and all(v is None or isinstance(v, int | float) for v in value)}
    ref = fields.pop("ref_logprobs", None)
    if ref is not None:
        fields["log_ratio"] = [None if lp is None or not m else lp - r
                               for lp, r, m in zip(sub["logprobs"], ref, sub["loss_mask"], strict=True)]
    return dict(sorted(fields.items(), key=lambda kv: (FIELD_ORDER + (kv[0],)).index(kv[0])))


def messages(texts: Sequence[str], mask: Sequence[int], *,
             request: str = SUMMARY_REQUEST) -> list[dict[str, Any]]:
    """Split one window's tokens into its chat messages: ``[{"role", "kind", "start", "end"}]`` with
    ``end`` exclusive. A message starts at each ``<|im_start|>`` token; the kinds are ``system``,
    ``task``, ``summary`` (the summary that opened this window), ``summary_request``, ``tool_result``,
    ``observation`` (other user messages), ``action`` (policy tokens), ``policy_summary`` (the summary the
    policy wrote) and ``context`` (an old action kept verbatim, not trained here)."""
    starts = [i for i, t in enumerate(texts) if t == "<|im_start|>"]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    out: list[dict[str, Any]] = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(texts)
        text = "".join(texts[start:end])
        role, _, content = text.removeprefix("<|im_start|>").partition("\n")
        kind = _kind(role, content, any(mask[start:end]), out, request)
        out.append({"role": role, "kind": kind, "start": start, "end": end})
    return out


def _kind(role: str, content: str, trained: bool, before: list[dict[str, Any]], request: str) -> str:
    if role == "system":
        return "system"
    if role == "user":
        if not any(m["kind"] == "task" for m in before):
            return "task"
        if content.startswith(SUMMARY_HEADER):
            return "summary"
        if content.strip().removesuffix("<|im_end|>").strip() == request.strip():
            return "summary_request"
        return "tool_result" if "<tool_response>" in content else "observation"
    if role == "assistant":
        if not trained:
            return "context"
        return "policy_summary" if before and before[-1]["kind"] == "summary_request" else "action"
    return "other"


def episode_view(record: dict[str, Any], decode: Callable[[int], str] | None,
                 request: str = SUMMARY_REQUEST) -> dict[str, Any]:
    """The page's form of one episode record: its facts and, per sub-trace, the tokens (id, text, mask),
    the numeric per-token fields and the messages."""
    subs = []
    for sub in record["sub_traces"]:
        ids, mask = sub["token_ids"], sub["loss_mask"]
        texts = [decode(t) for t in ids] if decode else [f"[{t}]" for t in ids]
        subs.append({"ids": ids, "text": texts, "mask": mask, "fields": token_fields(sub),
                     "messages": messages(texts, mask, request=request)})
    facts = {k: v for k, v in record.items() if k != "sub_traces"}
    return {"episode": facts, "sub_traces": subs, "has_text": decode is not None}


# ---- what the run saved beside its episodes -----------------------------------------------------------


def token_decoder(run_dir: Path, root: Path) -> Callable[[int], str] | None:
    """One token id -> its text, with the tokenizer the run saved (None when it saved none)."""
    candidates = [run_dir / "initial_model", *sorted((run_dir / "checkpoints").glob("iter_*/policy")),
                  root / "initial_model"]
    path = next((c / "tokenizer.json" for c in candidates if (c / "tokenizer.json").is_file()), None)
    if path is None:
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    cache: dict[int, str] = {}

    def decode(token: int) -> str:
        if token not in cache:
            cache[token] = tokenizer.decode([token], skip_special_tokens=False)
        return cache[token]

    return decode


def summary_request(run_dir: Path) -> str:
    """The run's ``rollout.compaction.summary_request`` (its config.yaml), else (unset, null) the default."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        request = cfg["rollout"]["compaction"]["summary_request"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return SUMMARY_REQUEST
    return request if isinstance(request, str) and request.strip() else SUMMARY_REQUEST
