"""How ``agentrl view`` copes with a large run: the index, and one very long episode in the browser.

    python benchmarks/viewer_load.py                       # 2,000 episodes of ~2,400 tokens + one of 100k
    python benchmarks/viewer_load.py --episodes 200 --long-tokens 20000 --repeats 1

A synthetic run is written with ``save_episodes`` in the layout ``agentrl train`` writes (three windows
per episode, runs of policy tokens between observations, sparse rewards, advantages, values and returns;
random token ids, no tokenizer, so the page shows ids), then, side by side in one process:

- **index**: ``Source.index()`` (the head of each line parsed, its token lists counted) against parsing
  every line whole with ``json.loads`` and the same ``summary``; the ratio full / fast.
- **page** (where Chromium and Playwright are installed): the served page opening the long episode
  against opening a normal one, each from a fresh page (so nothing is cached); the ratio long / normal,
  with the ratio of their token counts beside it.

Ratios are the result; absolute times depend on the machine. The median of ``--repeats`` is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agentrl.episodes import save_episodes
from agentrl.types import Episode, SubTrace
from agentrl.viewer.data import Source, episode_files, find_runs, summary
from agentrl.viewer.server import make_server, serve_in_thread, url_of

CHROMIUM = os.environ.get("AGENTRL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def window(rng: random.Random, tokens: int) -> tuple[SubTrace, list[float]]:
    """A window of about ``tokens`` tokens: a 600-token prompt, then turns of 30 policy tokens and 50
    observation tokens; its per-token advantages."""
    ids, mask = [rng.randrange(2048) for _ in range(600)], [0] * 600
    while len(ids) < tokens:
        ids += [rng.randrange(2048) for _ in range(80)]
        mask += [1] * 30 + [0] * 50
    rewards = [0.0] * len(ids)
    rewards[max(i for i, m in enumerate(mask) if m)] = 1.0
    logprobs = [-rng.random() if m else None for m in mask]
    sub = SubTrace(token_ids=tuple(ids), loss_mask=tuple(mask), logprobs=tuple(logprobs),
                   rewards=tuple(rewards))
    return sub, [rng.gauss(0, 0.1) * m for m in mask]


def write_run(out: Path, episodes: int, long_tokens: int, seed: int = 0) -> None:
    """A run directory with ``episodes`` 3-window episodes of ~2,400 tokens, then one of ~``long_tokens``
    in 4 windows."""
    rng = random.Random(seed)
    records, fields = [], []
    for e in range(episodes + 1):
        sizes = [long_tokens // 4] * 4 if e == episodes else [800] * 3
        subs = [window(rng, n) for n in sizes]
        records.append(Episode(sub_traces=tuple(s for s, _ in subs), task_id=f"bench:{e}", group_id=str(e),
                               end="terminated", num_turns=sum(s.num_policy_tokens for s, _ in subs) // 30))
        fields.append([a for _, a in subs])
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("")
    values = [[[v * 0.5 for v in a] for a in f] for f in fields]
    save_episodes(out / "episodes" / "iter_000001.jsonl", records, token_fields={
        "advantages": fields, "values": values, "returns": values})


def time_index(run: Path) -> tuple[float, float]:
    """Seconds of ``Source.index()`` and of a whole-line parse of every line, for one pass each."""
    start = time.perf_counter()
    Source(root=run, runs=find_runs(run)).index()
    fast = time.perf_counter() - start
    start = time.perf_counter()
    for path in episode_files(run):
        with path.open("rb") as f:
            for raw in f:
                summary(json.loads(raw))
    return fast, time.perf_counter() - start


def time_pages(run: Path, ids: Sequence[int]) -> list[float]:
    """Seconds from navigation to the page showing each episode, one fresh page per episode."""
    from playwright.sync_api import sync_playwright

    server = make_server(Source(root=run, runs=find_runs(run)))
    serve_in_thread(server)
    seconds = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            for episode_id in ids:
                page = browser.new_page()
                start = time.perf_counter()
                page.goto(url_of(server) + f"#episode={episode_id}")
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                seconds.append(time.perf_counter() - start)
                page.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2000, help="normal episodes (~2,400 tokens each)")
    parser.add_argument("--long-tokens", type=int, default=100_000, help="tokens of the one long episode")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        write_run(run, args.episodes, args.long_tokens)
        size = sum(p.stat().st_size for p in episode_files(run)) / 1e6
        print(f"run: {args.episodes + 1} episodes, {size:.0f} MB of JSONL")
        times = [time_index(run) for _ in range(args.repeats)]
        fast, full = (statistics.median(t[i] for t in times) for i in (0, 1))
        print(f"index: whole-line parse / index = {full / fast:.2f}x")
        if not Path(CHROMIUM).is_file():
            print(f"page: skipped (no Chromium at {CHROMIUM})")
            return 0
        index = Source(root=run, runs=find_runs(run)).index()["episodes"]
        normal, long = index[0], index[-1]
        pages = [time_pages(run, [normal["id"], long["id"]]) for _ in range(args.repeats)]
        short_s, long_s = (statistics.median(p[i] for p in pages) for i in (0, 1))
        print(f"page: {long['tokens']}-token episode / {normal['tokens']}-token episode = "
              f"{long_s / short_s:.2f}x (tokens {long['tokens'] / normal['tokens']:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
