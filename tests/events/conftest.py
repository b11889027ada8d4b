"""A real local HTTP receiver for webhooks, and helpers to register endpoints on it."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from events import signing


class _Server(ThreadingHTTPServer):
    # Several worker threads connect at once (a run sends on many threads, and tests start
    # several runs): with socketserver's backlog of 5 a burst overflows the accept queue, and
    # a connection dropped there can outlast the sender's timeout, a failed attempt that
    # waits its backoff with no run left to retry it.
    request_queue_size = 256


class Receiver:
    """An HTTP/1.1 (keep-alive) server on 127.0.0.1 that records every request and answers each
    with the next status of ``statuses`` (the last one repeats), 200 by default; -1 answers
    200 a second late."""

    def __init__(self):
        self.requests: list[dict] = []
        self.statuses: list[int] = [200]
        self.failing_paths: set[str] = set()  # always answered 500
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                if self.path in receiver.failing_paths:
                    status = 500
                if status == -1:  # a receiver too slow to answer
                    time.sleep(1)
                    status = 200
                answer = b'{"ok": true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def event_ids(self, path: str | None = None) -> list[int]:
        with self.lock:
            return [json.loads(r["body"])["id"] for r in self.requests if path is None or r["path"] == path]

    def verified(self, secret: str, request: dict, now: int | None = None) -> bool:
        return signing.verify(secret, request["headers"]["Webhook-Signature"], request["body"], now=now)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.fixture
def loopback_allowed(settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    return settings


def register(client, url: str, event_types=("*",), **extra) -> dict:
    """Register an endpoint through the API; returns the answer (with its secret)."""
    response = client.post(
        "/api/v1/webhook-endpoints", {"url": url, "event_types": list(event_types), **extra}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()
