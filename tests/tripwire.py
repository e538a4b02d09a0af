"""A tripwire for tests: a loopback HTTP server standing in for an external system, which records
every request and refuses it, so "refused before any request" is observed rather than assumed."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Tripwire", "serve_tripwire"]


@dataclass
class Tripwire:
    """Where the tripwire listens, and ``"METHOD /path"`` of every request it got, in order."""

    url: str
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve_tripwire(body: bytes) -> Iterator[Tripwire]:
    """Serve on a free loopback port, answering every request 401 with the JSON ``body``.

    Args:
        body: the error document to answer with, in the shape of the system it stands in for.
    """
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Tripwire(url=f"http://127.0.0.1:{server.server_port}", requests=seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
