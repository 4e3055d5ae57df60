"""``agentrl view`` on a real run made here: a tiny ``compare`` of PPO and GRPO on graph_nav with ``env``
compaction (from a few-second warm start, so episodes take several turns and windows), read by the data
module, served by the real server and opened in headless Chromium (Debian's package, driven by Playwright;
those tests skip with the reason when it is not installed). The numbers on the page are checked against
the episodes' own JSONL lines."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agentrl.cli import main
from agentrl.compaction import SUMMARY_HEADER, SUMMARY_REQUEST
from agentrl.viewer.data import fast_summary, messages, open_source, summary
from agentrl.viewer.server import make_server, serve_in_thread, url_of

CHROMIUM = os.environ.get("AGENTRL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN = [  # 2 tasks x 2 episodes, windows of 700 tokens (the prompt is ~600), env-written summaries
    "env.options.numbered=true", "env.options.marked=true", "rollout.tasks_per_iteration=2",
    "rollout.group_size=2", "rollout.max_turns=8", "rollout.context_budget=700",
    "rollout.max_response_tokens=32", "rollout.compaction.strategy=env", "rollout.tool_error_penalty=0.05",
    "run.checkpoint_every=0", "ppo.value_pretrain_steps=0",
]


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    """Every episode record of a run, in file order."""
    out = []
    for path in sorted((run_dir / "episodes").glob("iter_*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``agentrl compare`` of PPO and GRPO, one seed, one iteration each, from a 3-epoch warm start."""
    tmp = tmp_path_factory.mktemp("viewer")
    warm = tmp / "warm"
    assert main(["sft", "--env", "graph_nav", "--env-option", "size=small", "--env-option", "numbered=true",
                 "--env-option", "marked=true", "--out", str(warm), "--episodes", "8", "--epochs", "3",
                 "--eval-episodes", "0", "--heldout-demos", "0"]) == 0
    out = tmp / "compare"
    args = ["compare", "--env", "graph_nav", "--seeds", "1", "--budget", "4", "--model", str(warm),
            "--eval-episodes", "1", "--out", str(out), "--quiet"]
    assert main(args + [a for item in RUN for a in ("--set", item)]) == 0
    return out


def _with_compaction(compare_dir: Path, arm: str = "ppo") -> tuple[int, dict[str, Any]]:
    """The first episode of ``arm`` with a compaction: its id in the viewer's index and its JSONL record."""
    source = open_source(compare_dir)
    records = _lines(compare_dir / arm / "seed_0")
    entries = [e for e in source.index()["episodes"] if e["arm"] == arm]
    for entry, record in zip(entries, records, strict=True):
        if len(record["sub_traces"]) > 1:
            return entry["id"], record
    pytest.fail(f"the {arm} run has no episode with a compaction")


# ---- the data module and the command line ---------------------------------------------------------------


def test_index_lists_every_episode_and_reads_each_from_its_offset(compare_dir: Path) -> None:
    source = open_source(compare_dir)
    index = source.index()
    assert [r["name"] for r in index["runs"]] == ["grpo/seed_0", "ppo/seed_0"]
    records = _lines(compare_dir / "grpo" / "seed_0") + _lines(compare_dir / "ppo" / "seed_0")
    assert len(index["episodes"]) == len(records) == 8
    for entry, record in zip(index["episodes"], records, strict=True):
        assert entry["sub_traces"] == len(record["sub_traces"])
        assert entry["task_id"] == record["task_id"]
        view = source.episode(entry["id"])
        assert [s["ids"] for s in view["sub_traces"]] == [s["token_ids"] for s in record["sub_traces"]]
        # the tokens' texts, joined, are the window's text the run wrote
        assert ["".join(s["text"]) for s in view["sub_traces"]] == [s["text"] for s in record["sub_traces"]]
    assert any(e["sub_traces"] > 1 for e in index["episodes"])


def test_the_index_counts_lists_without_parsing_them_and_agrees_with_a_full_parse(compare_dir: Path) -> None:
    lines = (compare_dir / "ppo" / "seed_0" / "episodes" / "iter_000001.jsonl").read_bytes().splitlines()
    for raw in lines:
        assert fast_summary(raw) == summary(json.loads(raw))
    record = json.loads(lines[0])
    reordered = json.dumps({"sub_traces": record.pop("sub_traces"), **record}).encode()
    assert fast_summary(reordered) is None  # another layout: parsed whole instead
    assert fast_summary(lines[0][: len(lines[0]) // 2]) is None  # cut short


def test_fields_the_runs_wrote_are_offered_for_colouring(compare_dir: Path) -> None:
    source = open_source(compare_dir)
    ppo_id, record = _with_compaction(compare_dir, "ppo")
    fields = source.episode(ppo_id)["sub_traces"][0]["fields"]
    assert list(fields)[:3] == ["advantages", "values", "returns"]
    assert fields["values"] == record["sub_traces"][0]["values"]
    grpo_id, grpo = _with_compaction(compare_dir, "grpo")
    sub = grpo["sub_traces"][0]  # GRPO's kl_beta > 0 loads a reference: its log-probs were written
    ratio = source.episode(grpo_id)["sub_traces"][0]["fields"]["log_ratio"]
    for lp, ref, m, got in zip(sub["logprobs"], sub["ref_logprobs"], sub["loss_mask"], ratio, strict=True):
        assert got is None if not m else got == pytest.approx(lp - ref)


def test_messages_put_the_summary_at_the_start_of_the_next_window(compare_dir: Path) -> None:
    source = open_source(compare_dir)
    episode_id, record = _with_compaction(compare_dir)
    view = source.episode(episode_id)
    for k, sub in enumerate(view["sub_traces"]):
        kinds = [m["kind"] for m in sub["messages"]]
        assert kinds[:2] == ["system", "task"]
        spans = [(m["start"], m["end"]) for m in sub["messages"]]
        assert spans[0][0] == 0 and spans[-1][1] == len(sub["ids"])
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # they tile the window
        if k > 0:
            summary = sub["messages"][2]
            assert summary["kind"] == "summary"
            text = "".join(sub["text"][summary["start"]:summary["end"]])
            assert text.startswith(f"<|im_start|>user\n{SUMMARY_HEADER}")
    assert record["sub_traces"][1]["text"].count(SUMMARY_HEADER) == 1


def test_message_kinds_on_a_hand_made_window() -> None:
    texts = ["<|im_start|>", "system\nS", "<|im_end|>\n", "<|im_start|>", "user\nT", "<|im_end|>\n",
             "<|im_start|>", "assistant\n", "<tool_call>x</tool_call>", "<|im_end|>", "\n",
             "<|im_start|>", "user\n<tool_response>r</tool_response>", "<|im_end|>\n", "<|im_start|>",
             "assistant\n", "done", "<|im_end|>"]
    mask = [0] * 8 + [1, 1] + [0] * 6 + [1, 1]
    got = [(m["kind"], m["start"], m["end"]) for m in messages(texts, mask)]
    assert got == [("system", 0, 3), ("task", 3, 6), ("action", 6, 11), ("tool_result", 11, 14),
                   ("action", 14, 18)]
    # a window that asks for a summary, and the next one, opened by it with a kept turn
    texts = texts[:6] + ["<|im_start|>", f"user\n{SUMMARY_REQUEST}", "<|im_end|>\n", "<|im_start|>",
                         "assistant\n", "the key is east", "<|im_end|>"]
    mask = [0] * 11 + [1, 1]
    kinds = [m["kind"] for m in messages(texts, mask)]
    assert kinds == ["system", "task", "summary_request", "policy_summary"]
    texts = texts[:6] + ["<|im_start|>", f"user\n{SUMMARY_HEADER}\nthe key is east", "<|im_end|>\n",
                         "<|im_start|>", "assistant\n", "old action", "<|im_end|>\n"]
    assert [m["kind"] for m in messages(texts, [0] * len(texts))] == ["system", "task", "summary", "context"]


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("agentrl view: error: "), err
    return err[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "is not a directory" in _error_line(capsys, ["view", str(tmp_path / "missing")])
    (tmp_path / "notarun" / "stuff").mkdir(parents=True)
    assert "is not a run" in _error_line(capsys, ["view", str(tmp_path / "notarun")])
    empty = tmp_path / "empty"
    (empty / "episodes").mkdir(parents=True)
    (empty / "metrics.jsonl").write_text("")
    assert "no episodes" in _error_line(capsys, ["view", str(empty)])
    (empty / "episodes" / "iter_000001.jsonl").write_text("\n")  # a file with no record is no better
    assert "no episodes" in _error_line(capsys, ["view", str(empty)])


def test_export_bad_arguments(compare_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["view", str(compare_dir), "--export", str(tmp_path), "--max-episodes", "3"])
    assert "is a directory" in line
    line = _error_line(capsys, ["view", str(compare_dir), "--export", str(tmp_path / "x.html"),
                                "--max-episodes", "0"])
    assert "--max-episodes" in line


@pytest.fixture()
def truncated_run(compare_dir: Path, tmp_path: Path) -> Path:
    """A copy of the PPO run whose last episode line was cut halfway, as a killed writer leaves it."""
    run = tmp_path / "cut"
    shutil.copytree(compare_dir / "ppo" / "seed_0", run, ignore=shutil.ignore_patterns("checkpoints"))
    path = run / "episodes" / "iter_000001.jsonl"
    text = path.read_text()
    last = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: last + (len(text) - last) // 2])
    return run


def test_a_truncated_line_is_an_entry_with_its_error(truncated_run: Path) -> None:
    source = open_source(truncated_run)
    entries = source.index()["episodes"]
    assert len(entries) == 4 and ["error" in e for e in entries] == [False, False, False, True]
    assert "episodes/iter_000001.jsonl:4: not an episode record" in entries[3]["error"]
    with pytest.raises(ValueError, match="iter_000001.jsonl:4: not an episode record"):
        source.episode(3)
    assert len(source.episode(0)["sub_traces"]) == entries[0]["sub_traces"]


def test_server_answers_index_and_one_episode_per_request(compare_dir: Path) -> None:
    server = make_server(open_source(compare_dir), port=0)
    serve_in_thread(server)
    try:
        url = url_of(server)
        assert url.startswith("http://127.0.0.1:")
        index = json.load(urllib.request.urlopen(url + "api/index"))
        assert len(index["episodes"]) == 8
        one = json.load(urllib.request.urlopen(url + "api/episode?id=5"))
        assert one["entry"]["id"] == 5 and one["sub_traces"]
        bad = json.load(urllib.request.urlopen(url + "api/episode?id=99"))
        assert "no such episode" in bad["error"]
        assert b"agentrl view" in urllib.request.urlopen(url).read()
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_serves_on_127_0_0_1_and_prints_the_url(compare_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "agentrl.cli", "view", str(compare_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url is not None and int(url.group(1)) > 0, line
        assert line.startswith("serving 8 episodes of ")
        index = json.load(urllib.request.urlopen(url.group(0) + "api/index", timeout=30))
        assert len(index["episodes"]) == 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_port_in_use_is_one_line(compare_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _error_line(capsys, ["view", str(compare_dir), "--port", str(port)])
    assert "cannot listen on 127.0.0.1" in line


# ---- in a real browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium, or a skip that says why there is none."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it where it can)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -e '.[viewer]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any) -> Any:
    """A fresh page whose console errors and uncaught exceptions are collected in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    p.errors = []
    p.on("console", lambda m: p.errors.append(m.text) if m.type == "error" else None)
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    yield p
    context.close()


@pytest.fixture(scope="module")
def served(compare_dir: Path) -> Any:
    server = make_server(open_source(compare_dir), port=0)
    serve_in_thread(server)
    yield url_of(server)
    server.shutdown()
    server.server_close()


def _open(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def _expected_colour(value: float, scale: float) -> str:
    """The page's diverging scale: white at 0, rgb(33,102,172) at +scale, rgb(178,24,43) at -scale."""
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    target = (178, 24, 43) if t < 0 else (33, 102, 172)
    r, g, b = (_js_round(255 + (c - 255) * abs(t)) for c in target)
    return f"rgb({r}, {g}, {b})"


def _js_round(x: float) -> int:
    return math.floor(x + 0.5)  # Math.round, not Python's round-half-even


def _check_tokens(page: Any, sub: dict[str, Any], k: int, field: str, pane: str = "#pane-a") -> None:
    """Each policy token of window ``k`` has the colour of its ``field`` value, and hovering one shows its
    id, text and value; observation tokens are grey and uncoloured."""
    mask, values = sub["loss_mask"], sub[field]
    scale = float(page.get_attribute(f"{pane} .legend", "data-scale"))
    policy = [i for i, m in enumerate(mask) if m]
    for i in policy:
        got = page.eval_on_selector(f'{pane} .tok[data-k="{k}"][data-i="{i}"]',
                                    "e => getComputedStyle(e).backgroundColor")
        assert got == _expected_colour(values[i], scale), (i, values[i])
    i = max(policy, key=lambda j: abs(values[j]))
    page.hover(f'{pane} .tok[data-k="{k}"][data-i="{i}"]')
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    assert tip.locator(".tip-id").inner_text() == str(sub["token_ids"][i])
    shown = float(tip.locator(f'tr[data-field="{field}"] td').nth(1).inner_text())
    assert shown == pytest.approx(values[i], rel=1e-5, abs=1e-9)
    obs = next(j for j, m in enumerate(mask) if not m)
    cls = page.get_attribute(f'{pane} .tok[data-k="{k}"][data-i="{obs}"]', "class")
    assert "obs" in cls.split()


@pytest.mark.browser
def test_page_shows_counts_colours_hover_and_the_summary(compare_dir: Path, served: str, page: Any) -> None:
    episode_id, record = _with_compaction(compare_dir)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url.removeprefix(served)))
    _open(page, served + f"#episode={episode_id}")
    assert asked == ["", "api/index", f"api/episode?id={episode_id}"]  # one episode, when it is opened
    assert page.get_attribute("#episode-count", "data-count") == "8"
    assert page.locator("#episode-list tbody tr").count() == 8
    n = len(record["sub_traces"])
    assert page.get_attribute("#pane-a .subtrace-count", "data-count") == str(n)
    assert page.locator("#pane-a .subtrace").count() == n
    assert page.get_attribute("#pane-a .legend", "data-field") == "advantages"  # the default
    scale = max(abs(v) for s in record["sub_traces"] for v, m in zip(s["advantages"], s["loss_mask"],
                                                                      strict=True) if m)
    assert float(page.get_attribute("#pane-a .legend", "data-scale")) == pytest.approx(scale, rel=1e-12)
    for k, sub in enumerate(record["sub_traces"]):
        _check_tokens(page, sub, k, "advantages")
    for k in range(1, n):  # the summary that opened window k+1 is shown at the boundary before it
        boundary = page.locator(f'#pane-a .boundary[data-k="{k}"]')
        text = boundary.locator(".summary-text").inner_text()
        assert text.startswith(SUMMARY_HEADER)
        window = record["sub_traces"][k]["text"]
        assert text.strip() in window
        first = page.locator(f'#pane-a .subtrace[data-k="{k}"] > *').nth(1)
        assert first.get_attribute("class") == "boundary"
    assert page.locator("#pane-a .ending").inner_text().startswith("ended: ")
    page.select_option("#field", "values")
    assert page.get_attribute("#pane-a .legend", "data-field") == "values"
    _check_tokens(page, record["sub_traces"][0], 0, "values")
    assert page.locator("#pane-a .turn-bar").count() == record["num_turns"]
    assert page.errors == []


@pytest.mark.browser
def test_filters_and_the_two_arms_side_by_side(compare_dir: Path, served: str, page: Any) -> None:
    episode_id, record = _with_compaction(compare_dir)
    _open(page, served + f"#episode={episode_id}")
    page.select_option("#f-subs", "1")
    records = [r for arm in ("grpo", "ppo") for r in _lines(compare_dir / arm / "seed_0")]
    expected = sum(len(r["sub_traces"]) == 1 for r in records)
    assert page.get_attribute("#episode-count", "data-count") == str(expected)
    page.select_option("#f-subs", "")
    page.select_option("#compare-arm", "grpo")
    page.locator("#pane-b .facts").wait_for()
    other = int(page.get_attribute("#pane-b", "data-id"))
    index = open_source(compare_dir).index()["episodes"]
    assert index[other]["arm"] == "grpo" and index[other]["task_id"] == record["task_id"]
    assert page.locator("#pane-a .facts").inner_text().count(record["task_id"]) == 1
    assert page.errors == []


@pytest.mark.browser
def test_export_opens_from_a_file_with_the_network_off(compare_dir: Path, tmp_path: Path, page: Any,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    episode_id, record = _with_compaction(compare_dir)
    out = tmp_path / "view.html"
    assert main(["view", str(compare_dir), "--export", str(out)]) == 0
    assert "8 episodes" in capsys.readouterr().out
    requests: list[str] = []
    page.context.set_offline(True)
    page.context.route("**/*", lambda route: (requests.append(route.request.url), route.continue_()))
    _open(page, out.as_uri() + f"#episode={episode_id}")
    assert all(u.startswith("file://") for u in requests), requests
    assert page.get_attribute("#episode-count", "data-count") == "8"
    assert page.get_attribute("#pane-a .subtrace-count", "data-count") == str(len(record["sub_traces"]))
    for k, sub in enumerate(record["sub_traces"]):
        _check_tokens(page, sub, k, "advantages")
    assert page.locator("#pane-a .boundary").count() == len(record["sub_traces"]) - 1
    assert page.errors == []


@pytest.mark.browser
def test_bad_episodes_are_a_message_on_the_page(truncated_run: Path, page: Any) -> None:
    source = open_source(truncated_run)
    server = make_server(source, port=0)
    serve_in_thread(server)
    try:
        _open(page, url_of(server))
        assert page.get_attribute("#episode-count", "data-count") == "4"
        page.click('#episode-list tr[data-id="3"]')
        message = page.locator("#pane-a .episode-error")
        message.wait_for()
        assert "iter_000001.jsonl:4: not an episode record" in message.inner_text()
        (truncated_run / "episodes" / "iter_000001.jsonl").unlink()  # gone after the index was read
        page.click('#episode-list tr[data-id="1"]')
        gone = page.locator("#pane-a .episode-error", has_text="cannot read the episode file")
        gone.wait_for()
        assert "episodes/iter_000001.jsonl:2" in gone.inner_text()
        assert page.errors == []
    finally:
        server.shutdown()
        server.server_close()
