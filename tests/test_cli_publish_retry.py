"""``tidings publish`` retries a lost answer or a ``503`` with one idempotency key of its own."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from conftest import UNIT
from test_cli import Served, poll_all, served, tidings  # noqa: F401 - the fixture


class LossyFront(http.server.ThreadingHTTPServer):
    """In front of a server: forwards each publish, then loses the first answers.

    The first answer is dropped (the connection closes, as when a node dies
    after Redis stored the message), the second replaced by a ``503``; the
    rest go through. :attr:`keys` records the ``Idempotency-Key`` of each try.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.keys: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: LossyFront

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {name: self.headers[name] for name in ("Content-Type", "Idempotency-Key")
                   if self.headers[name] is not None}
        answer = httpx.post(self.server.upstream + self.path, content=body, headers=headers,
                            timeout=5 * UNIT)
        self.server.keys.append(self.headers["Idempotency-Key"])
        attempt = len(self.server.keys)
        if attempt == 1:
            self.close_connection = True
            self.connection.close()
            return
        status, content = ((503, b'{"error":"broker_unavailable"}') if attempt == 2
                           else (answer.status_code, answer.content))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def front(served: Served) -> Iterator[LossyFront]:  # noqa: F811
    lossy = LossyFront(served.url)
    thread = threading.Thread(target=lossy.serve_forever, daemon=True)
    thread.start()
    yield lossy
    lossy.shutdown()
    lossy.server_close()
    thread.join(5 * UNIT)


def test_publish_retries_with_one_key_and_stores_once(served: Served,  # noqa: F811
                                                      front: LossyFront) -> None:
    result = tidings("publish", "cli-retry", '{"n":1}', "--url", front.url)
    assert result.returncode == 0, result.stderr
    assert len(front.keys) == 3 and len(set(front.keys)) == 1 and front.keys[0]
    messages = poll_all(served.url, "cli-retry")["messages"]
    assert [m["data"] for m in messages] == [{"n": 1}]
    assert '"replayed":true' in result.stdout
    assert messages[0]["id"] in result.stdout


def test_publish_gives_up_after_its_retries(served: Served,  # noqa: F811
                                            front: LossyFront) -> None:
    result = tidings("publish", "cli-retry", "1", "--url", front.url, "--retries", "1",
                     "--idempotency-key", "mine")
    assert result.returncode == 1
    assert "503" in result.stderr and "after 2 attempts" in result.stderr
    assert front.keys == ["mine", "mine"]
