"""Episodes on disk: one JSON object per line, token-level fields and, optionally, the text.

Each line is ``Episode.to_dict()``; when a ``decode`` function is given (``ChatFormat.decode``), every
sub-trace also carries ``"text"`` (the whole window, special tokens included) and ``"policy_text"``
(the decoded runs of policy tokens, in order), for reading and grepping. Loading ignores the text fields
and rebuilds the same ``Episode`` records, validated. Log-probs are written with ``repr`` precision
(``json`` writes floats exactly), so a round trip is lossless.

This module imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from agentrl.types import Episode, SubTrace


def policy_segments(sub_trace: SubTrace) -> list[list[int]]:
    """The runs of consecutive policy tokens (loss mask 1) of a sub-trace, in order."""
    runs: list[list[int]] = []
    previous = 0
    for token, mask in zip(sub_trace.token_ids, sub_trace.loss_mask, strict=True):
        if mask and not previous:
            runs.append([])
        if mask:
            runs[-1].append(token)
        previous = mask
    return runs


def save_episodes(
    path: str | Path,
    episodes: Iterable[Episode],
    *,
    decode: Callable[[Sequence[int]], str] | None = None,
    token_fields: Mapping[str, Sequence[Sequence[Sequence[float]]]] | None = None,
) -> int:
    """Write ``episodes`` as JSONL to ``path`` (parents created); return how many were written.

    ``token_fields`` adds per-token values computed after the rollout (``{"advantages": ...}``): for each
    name, one list per episode of one list per sub-trace, as long as its tokens. They are written into
    each sub-trace's record; ``load_episodes`` ignores them.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fields = dict(token_fields or {})
    with p.open("w", encoding="utf-8") as f:
        for e, episode in enumerate(episodes):
            record = episode.to_dict()
            for name, values in fields.items():
                for d, st, tokens in zip(record["sub_traces"], episode.sub_traces, values[e], strict=True):
                    if len(tokens) != st.num_tokens:
                        raise ValueError(f"token_fields[{name!r}]: episode {e} has a sub-trace of "
                                         f"{st.num_tokens} tokens, got {len(tokens)} values")
                    d[name] = [float(v) for v in tokens]
            if decode is not None:
                for d, st in zip(record["sub_traces"], episode.sub_traces, strict=True):
                    d["text"] = decode(st.token_ids)
                    d["policy_text"] = [decode(seg) for seg in policy_segments(st)]
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count


def load_episodes(path: str | Path) -> list[Episode]:
    """Read a JSONL file written by ``save_episodes``; ValueError naming the line for a bad record."""
    episodes = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                episodes.append(Episode.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not an episode record ({type(e).__name__}: {e})") from e
    return episodes
