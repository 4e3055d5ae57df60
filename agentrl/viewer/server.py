"""Serving the viewer page (the standard library's ``http.server``) and exporting it as one HTML file.

The page is ``static/viewer.html`` with ``viewer.css`` and ``viewer.js`` inlined, so served and exported
pages are the same document. Served, it asks ``/api/index`` for the episode list and
``/api/episode?id=N`` for one episode when it is opened; exported, the index and the episodes' data sit in
the file (a ``<script type="application/json">`` block) and nothing is fetched, so it opens from disk
with the network off.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from agentrl.viewer.data import Source

DATA_MARKER = "<!--agentrl-data-->"


def page(data: dict[str, Any] | None = None) -> str:
    """The viewer page with its CSS and JavaScript inlined; with ``data`` ({"index", "episodes"}) also
    the data, so the page needs no server."""
    static = resources.files("agentrl.viewer") / "static"
    html = (static / "viewer.html").read_text(encoding="utf-8")
    html = html.replace("/*agentrl-css*/", (static / "viewer.css").read_text(encoding="utf-8"))
    html = html.replace("/*agentrl-js*/", (static / "viewer.js").read_text(encoding="utf-8"))
    block = ""
    if data is not None:
        # "</" inside a script block would end it early; "<\/" is the same string to JSON.parse
        text = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
        block = f'<script type="application/json" id="agentrl-data">{text}</script>'
    return html.replace(DATA_MARKER, block)


def export(source: Source, out: str | Path, *, max_episodes: int) -> tuple[Path, int]:
    """Write the self-contained page of ``source``'s first ``max_episodes`` episodes to ``out``; returns
    the path and how many episodes it holds. An episode that does not load is kept as its error."""
    if max_episodes < 1:
        raise ValueError(f"--max-episodes: expected an int >= 1, got {max_episodes}")
    index = dict(source.index())
    index["episodes"] = index["episodes"][:max_episodes]
    index["left_out"] = len(source.index()["episodes"]) - len(index["episodes"])
    episodes: dict[str, Any] = {}
    for entry in index["episodes"]:
        if "error" in entry:
            continue
        try:
            episodes[str(entry["id"])] = source.episode(entry["id"])
        except ValueError as e:
            episodes[str(entry["id"])] = {"error": str(e)}
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--export: {path} is a directory; give a file name such as view.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page({"index": index, "episodes": episodes}), encoding="utf-8")
    return path, len(index["episodes"])


class _Handler(BaseHTTPRequestHandler):
    source: Source  # set on the subclass ``make_server`` builds

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, page().encode(), "text/html; charset=utf-8")
        elif url.path == "/api/index":
            self._json(HTTPStatus.OK, self.source.index())
        elif url.path == "/api/episode":
            self._episode(parse_qs(url.query).get("id", [""])[0])
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"{url.path}: not found"})

    def _episode(self, raw_id: str) -> None:
        try:
            self._json(HTTPStatus.OK, self.source.episode(int(raw_id)))
        except ValueError as e:  # a bad id or a bad line: the page shows the message
            self._json(HTTPStatus.OK, {"error": str(e) if raw_id.strip() else "id: missing"})

    def _json(self, status: HTTPStatus, body: Any) -> None:
        self._send(status, json.dumps(body, allow_nan=False).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per request would bury the URL the user needs


def make_server(source: Source, *, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server of the page for ``source`` on ``host:port`` (port 0: a free one), not yet serving."""
    handler = type("Handler", (_Handler,), {"source": source})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise ValueError(f"--port: cannot listen on {host}:{port} ({e.strerror or e})") from e
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve in a daemon thread (tests); stop with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
