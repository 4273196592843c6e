"""The client's retries against a tiny stdlib HTTP server that fails on purpose (no Ray, no model)."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.masks import generate, mask_sha256
from maskcrypt.serving.client import Client, RetryPolicy, retryable

MASKS = generate(2, 16, seed=0)
PIXELS = [{"mask_id": f"m{i}", "height": 16, "width": 16, "sha256": mask_sha256(m),
           "bits": base64.b64encode(np.packbits(m.reshape(-1) > 0).tobytes()).decode()} for i, m in enumerate(MASKS)]


class Flaky(BaseHTTPRequestHandler):
    """Answers POSTs by the server's plan, one step per request: a status, "busy" (503 with Retry-After: 1),
    "close" (drop the connection without an answer), "hang" (answer after the client's timeout); then 200."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _answer(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(200, {"source": "targets", "masks": [], "pixels": PIXELS})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        with server.lock:
            server.posts.append(self.path)
            step = server.plan.pop(0) if server.plan else 200
        if step == "close":
            self.close_connection = True
            return
        if step == "hang":
            time.sleep(1.0)
            step = 200
        if step == 200:
            self._answer(200, {"label": 1, "mask_id": "m0", "premasked": True})
        elif step == "busy":
            self._answer(503, {"error": "planned busy"}, {"Retry-After": "1"})
        else:
            self._answer(int(step), {"error": f"planned {step}"})


@pytest.fixture
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    server.plan, server.posts, server.lock = [], [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _client(url: str, **kwargs) -> tuple[Client, list[float]]:
    client = Client(url, **kwargs)
    sleeps: list[float] = []
    client._sleep = sleeps.append  # record the backoff instead of waiting it
    return client, sleeps


FACE = np.zeros((3, 16, 16), np.uint8)


def test_recognize_retries_5xx_dropped_connections_and_timeouts(flaky):
    server, url = flaky
    client, sleeps = _client(url, timeout=0.5, retries=5, backoff_s=0.1)
    server.plan[:] = [503, "close", 500, "hang", "busy"]
    assert client.recognize(FACE)["label"] == 1
    assert len(server.posts) == 6 and client.retried == 5 and len(sleeps) == 5
    assert sleeps[-1] == 1.0  # the server's Retry-After
    assert all(p.startswith("/v1/recognize?") and "premasked=true" in p for p in server.posts)


def test_retries_give_up_with_one_named_error(flaky, tmp_path):
    server, url = flaky
    client, sleeps = _client(url, retries=2)
    server.plan[:] = [502] * 10
    with pytest.raises(MaskcryptError, match=r"service answered 502 \(after 3 tries\): .*planned 502"):
        client.recognize(FACE)
    assert len(server.posts) == 3 and len(sleeps) == 2
    server.shutdown()
    server.server_close()  # nothing listens any more: connection refused, retried, then named
    with pytest.raises(MaskcryptError, match=rf"could not reach {url} \(after 3 tries\): ConnectionRefusedError"):
        client.recognize(FACE)


def test_client_errors_and_enrollment_are_not_retried(flaky):
    server, url = flaky
    client, sleeps = _client(url, retries=3)
    server.plan[:] = [400]
    with pytest.raises(MaskcryptError, match="service answered 400: "):
        client.recognize(FACE)
    server.plan[:] = [503]  # an enrollment that reached the server may have landed: never sent twice
    with pytest.raises(MaskcryptError, match="service answered 503: "):
        client.enroll("alice", [FACE])
    assert len(server.posts) == 2 and sleeps == [] and client.retried == 0
    assert server.posts[1].startswith("/v1/enroll?")
    off, _ = _client(url, retries=0)
    server.plan[:] = [503]
    with pytest.raises(MaskcryptError, match="service answered 503: "):
        off.recognize(FACE)
    assert len(server.posts) == 3


def test_backoff_grows_exponentially_with_jitter_up_to_a_cap():
    policy = RetryPolicy(retries=6, backoff_s=0.1, max_delay_s=0.5)
    rng = random.Random(0)
    for attempt, full in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (5, 0.5)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full and max(delays) - min(delays) > full / 4
    assert policy.delay(1, rng, retry_after="3") == 0.5  # a server's Retry-After, capped
    assert RetryPolicy(max_delay_s=5).delay(1, rng, retry_after="2") == 2.0
    with pytest.raises(MaskcryptError, match="retry policy"):
        RetryPolicy(retries=-1)
    import urllib.error

    assert retryable(urllib.error.HTTPError("u", 503, "x", {}, None)) and retryable(ConnectionResetError())
    assert not retryable(urllib.error.HTTPError("u", 404, "x", {}, None)) and not retryable(ValueError())
