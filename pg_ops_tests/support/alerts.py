"""An alert receiver for the tests: a local webhook that records what pg_ops POSTs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookCapture:
    """A local HTTP server that records every JSON body POSTed to it. mode: ok | fail | hang."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.bodies: list[dict] = []
        self.attempts = 0
        self.release = threading.Event()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                capture.attempts += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if capture.mode == "hang":
                    capture.release.wait(30)
                    return
                if capture.mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                capture.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def kinds(self, resolved: bool | None = None) -> list[tuple[str, str]]:
        return [(b["kind"], b["details"].get("member", "")) for b in self.bodies
                if resolved is None or (b["resolved_at"] is not None) == resolved]
