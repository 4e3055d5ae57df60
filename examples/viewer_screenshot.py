"""A headless screenshot of one episode in the viewer: how docs/viewer.png was made.

    # a graph_nav warm start (about 2 minutes), then 2 PPO iterations with policy-written compaction
    agentrl sft --env graph_nav --env-option size=small --env-option numbered=true \\
        --env-option marked=true --out runs/warm_graph_nav --episodes 32 --epochs 8 \\
        --eval-episodes 0 --heldout-demos 0
    agentrl train --config examples/ppo_graph_nav.yaml --run-dir runs/view_graph_nav --quiet \\
        --set model.path=runs/warm_graph_nav --set env.options.numbered=true \\
        --set env.options.marked=true --set run.iterations=1 --set rollout.context_budget=900 \\
        --set rollout.tool_error_penalty=0.05
    agentrl view runs/view_graph_nav --export runs/view_graph_nav.html
    python examples/viewer_screenshot.py runs/view_graph_nav.html docs/viewer.png

The page is opened from the file with the network off; the episode shown is the one with the most
sub-traces (ties: the last iteration's first). Needs Playwright (``pip install -e '.[viewer]'``) and a
Chromium (Debian: ``apt-get install chromium``; another path with ``AGENTRL_CHROMIUM``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def most_windows(page_file: Path) -> int:
    """The id of the exported page's episode with the most sub-traces (ties: the last iteration's first)."""
    block = re.search(r'<script type="application/json" id="agentrl-data">(.*?)</script>',
                      page_file.read_text(encoding="utf-8"), flags=re.S)
    if block is None:
        raise SystemExit(f"{page_file}: not a page written by agentrl view --export")
    entries = [e for e in json.loads(block.group(1))["index"]["episodes"] if "error" not in e]
    return max(entries, key=lambda e: (e["sub_traces"], e["iteration"], -e["id"]))["id"]


def main(page_file: Path, out: Path, width: int = 1280, height: int = 1500) -> None:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("AGENTRL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        context = browser.new_context(viewport={"width": width, "height": height}, offline=True)
        page = context.new_page()
        page.goto(page_file.resolve().as_uri() + f"#episode={most_windows(page_file)}")
        page.wait_for_selector("body[data-ready='1']")
        # the hover card over a policy token that is on screen without scrolling (hover() would scroll)
        for token in page.locator("#pane-a .tok.pol").all():
            box = token.bounding_box()
            if box and box["y"] > height * 0.45:
                break
            if box and box["y"] > 0:
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.screenshot(path=str(out))
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python examples/viewer_screenshot.py PAGE.html OUT.png")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
