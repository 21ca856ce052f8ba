"""``[hooks]``: the application decides over HTTP, for a tidings that runs apart from it.

A real application (Starlette under uvicorn, tests/embedding/hookapp.py)
answers the calls; clients we did not write (httpx, ``websockets``) read and
publish on every technique. Allow, refuse, replace; a hook that is slow, down
or answers garbage gives a retryable 503, never a silent allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hookapp import FAILURES, SECRET, HookApp, closed_port_url, hook_app
from websockets.exceptions import InvalidStatus

from conftest import ServerFactory, until
from tidings import Server
from tidings.settings import HooksSettings
from tidings.testing import (
    UNIT,
    command,
    http_client,
    open_sse,
    open_ws,
    poll,
    post,
    publish,
    recv_json,
    recv_messages,
    require_error,
)

ALICE = {"Cookie": "session=s-alice"}
#: How each technique reads ``path``, given as (technique, request options).
READS = {
    "poll": {},
    "longpoll": {"params": {"wait": "0.01"}},
    "sse": {"headers": {"Accept": "text/event-stream"}},
}


@contextlib.asynccontextmanager
async def alice_ws(server: Server) -> AsyncIterator[Any]:
    """Alice's WebSocket on ``/subscribe``: the channels her connect hook named
    (``private:alice``) are read first, announced by a ``subscribed`` frame."""
    async with open_ws(server, "/subscribe", additional_headers=ALICE) as ws:
        first = await recv_json(ws)
        assert (first["type"], first["channel"]) == ("subscribed", "private:alice")
        yield ws


@pytest.fixture
async def app() -> Any:
    async with hook_app() as app:
        yield app


async def read_status(server: Server, technique: str, path: str,
                      headers: dict[str, str] | None = None) -> tuple[int, str | None]:
    """The status and error code one read on ``technique`` gets (the stream closed at once)."""
    if technique == "websocket":
        try:
            async with open_ws(server, path, additional_headers=headers or {}) as ws:
                await recv_json(ws)  # the subscription's first frame: it was allowed
                return 101, None
        except InvalidStatus as refused:
            body = refused.response.body or b"{}"
            return refused.response.status_code, json.loads(body).get("error")
    options = READS[technique]
    async with http_client(server) as http, http.stream(
            "GET", path, params=options.get("params"),
            headers={**(headers or {}), **options.get("headers", {})}) as answer:
        if answer.status_code != 200:
            await answer.aread()
            return answer.status_code, answer.json().get("error")
        return 200, None


TECHNIQUES = ["poll", "longpoll", "sse", "websocket"]
#: Failures of hooks whose answer has no user to check.
ANSWER_FAILURES = [failure for failure in FAILURES if failure != "bad_user"]


@pytest.mark.parametrize("technique", TECHNIQUES)

async def test_connect_refuses_and_allows_on_every_technique(
        make_server: ServerFactory, app: HookApp, technique: str) -> None:
    server = await make_server(hooks=app.settings())
    anonymous = await read_status(server, technique, "/channels/news")
    alice = await read_status(server, technique, "/channels/news", ALICE)
    assert anonymous == (401, "login_required")
    assert alice[0] in (200, 101)
    assert [c.body["technique"] for c in app.of("connect")] == [technique, technique]
    assert app.of("connect")[1].body["cookies"] == {"session": "s-alice"}
    assert app.of("connect")[1].body["channels"] == ["news"]


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_subscribe_refuses_and_allows_on_every_technique(
        make_server: ServerFactory, app: HookApp, technique: str) -> None:
    server = await make_server(hooks=app.settings())
    theirs = await read_status(server, technique, "/channels/private:bob", ALICE)
    mine = await read_status(server, technique, "/channels/private:alice", ALICE)
    assert theirs == (403, "not_yours")
    assert mine[0] in (200, 101)
    assert [(c.body["user"], c.body["channel"]) for c in app.of("subscribe")] == [
        ("alice", "private:bob"), ("alice", "private:alice")]


async def test_a_refusal_reaches_the_client_with_its_message(make_server: ServerFactory,
                                                             app: HookApp) -> None:
    server = await make_server(hooks=app.settings())
    async with http_client(server) as http:
        anonymous = await http.get("/channels/news")
        html = await http.get("/channels/html-refusal", headers=ALICE)
    assert anonymous.status_code == 401
    assert anonymous.json() == {"error": "login_required", "message": "log in first"}
    # A 403 without tidings' JSON (a framework's HTML page) still refuses, as forbidden.
    require_error(html, 403, "forbidden", "a refusal without a JSON body")


async def test_websocket_subscribe_commands_go_through_the_hook_in_order(
        make_server: ServerFactory, app: HookApp) -> None:
    server = await make_server(hooks=app.settings())
    async with alice_ws(server) as ws:
        for req, channel in enumerate(["news", "private:bob", "private:alice"], 1):
            await ws.send(f'{{"type":"subscribe","req":{req},"channel":"{channel}"}}')
        replies = [await recv_json(ws) for _ in range(3)]
    assert [(r["type"], r["req"]) for r in replies] == [("ack", 1), ("error", 2), ("ack", 3)]
    assert (replies[1]["error"], replies[1]["message"]) == ("not_yours",
                                                            "private:bob is not yours")


async def test_publish_allows_refuses_and_replaces(make_server: ServerFactory,
                                                  app: HookApp) -> None:
    server = await make_server(hooks=app.settings())
    async with http_client(server) as http:
        kept = await publish(http, "news", {"n": 1}, headers=ALICE)
        refused = await post(http, "forbidden", 1, headers=ALICE)
        replaced = await publish(http, "shout", "hello", headers=ALICE)
        async with alice_ws(server) as ws:
            ws_refused = await command(ws, type="publish", req=1, channel="forbidden", data=2)
            ws_replaced = await command(ws, type="publish", req=2, channel="shout", data="hi")
        news = await poll(http, "/channels/news", headers=ALICE, since="0")
        shout = await poll(http, "/channels/shout", headers=ALICE, since="0")
        nothing = await poll(http, "/channels/forbidden", headers=ALICE, since="0")
    require_error(refused, 403, "read_only", "a publish the application refused")
    assert (ws_refused["type"], ws_refused["error"]) == ("error", "read_only")
    assert ws_replaced["type"] == "ack"
    assert [m["id"] for m in news["messages"]] == [kept]
    assert [m["data"] for m in news["messages"]] == [{"n": 1}]
    assert [m["data"] for m in shout["messages"]] == [
        {"from": "alice", "text": "HELLO"}, {"from": "alice", "text": "HI"}]
    assert shout["messages"][0]["id"] == replaced
    assert nothing["messages"] == []
    assert server.health()["published"] == 3
    assert [c.body["data"] for c in app.of("publish")] == [{"n": 1}, 1, "hello", 2, "hi"]


async def test_rpc_answers_and_refuses(make_server: ServerFactory, app: HookApp) -> None:
    server = await make_server(hooks=app.settings())
    async with alice_ws(server) as ws:
        echo = await command(ws, type="rpc", req=1, method="typing", data={"room": "lobby"})
        secret = await command(ws, type="rpc", req=2, method="secret")
    assert echo == {"type": "ack", "req": 1,
                    "result": {"user": "alice", "method": "typing", "echo": {"room": "lobby"}}}
    assert (secret["type"], secret["error"]) == ("error", "no_secrets")


async def test_hooks_run_per_connection_and_subscription_never_per_message(
        make_server: ServerFactory, app: HookApp) -> None:
    server = await make_server(hooks=app.settings())
    async with http_client(server) as http, \
            open_sse(http, "/channels/news", headers=ALICE) as stream, \
            open_ws(server, "/channels/news", additional_headers=ALICE) as ws:
        await stream.opening()
        await recv_json(ws)
        for n in range(20):
            await server.publish("news", n)
        await stream.messages(20)
        await recv_messages(ws, 20)
    assert len(app.of("connect")) == 2
    assert len(app.of("subscribe")) == 2
    assert app.of("publish") == []


async def test_only_listed_headers_and_cookies_are_forwarded_with_the_secret(
        make_server: ServerFactory, app: HookApp) -> None:
    server = await make_server(hooks=app.settings(
        forward_headers=("X-Request-Id", "authorization"), forward_cookies=("session",)))
    headers = {"Cookie": "session=s-alice; tracking=t-1; csrftoken=c-1",
               "X-Request-Id": "r-7", "Authorization": "Bearer not-a-token-of-ours",
               "X-Other": "o-1"}
    async with http_client(server) as http:
        await http.get("/channels/news", headers=headers)
    (call,) = app.of("connect")
    assert call.body["headers"] == {"x-request-id": "r-7",
                                    "authorization": "Bearer not-a-token-of-ours"}
    assert call.body["cookies"] == {"session": "s-alice"}
    assert call.headers["x-tidings-hook-secret"] == SECRET
    assert call.headers["content-type"] == "application/json"
    # Nothing of the client's request reaches the application as a header of the call.
    assert not {"cookie", "x-request-id", "x-other", "authorization"} & set(call.headers)
    assert call.body["client"] == "127.0.0.1"
    assert call.body["path"] == "/channels/news"
    assert call.body["claims"] is None


async def test_nothing_is_forwarded_unless_listed(make_server: ServerFactory,
                                                  app: HookApp) -> None:
    server = await make_server(hooks=app.settings(forward_cookies=()))
    async with http_client(server) as http:
        answer = await http.get("/channels/news", headers={**ALICE, "X-Request-Id": "r"})
    require_error(answer, 401, "login_required", "a session cookie that was not forwarded")
    (call,) = app.of("connect")
    assert (call.body["headers"], call.body["cookies"]) == ({}, {})


async def test_a_wrong_secret_is_refused_by_the_application(make_server: ServerFactory,
                                                            app: HookApp) -> None:
    server = await make_server(hooks=app.settings(secret="not-the-application-secret"))
    async with http_client(server) as http:
        answer = await http.get("/channels/news", headers=ALICE)
    require_error(answer, 403, "bad_secret", "a call with a wrong secret")


async def test_calls_reuse_connections(make_server: ServerFactory, app: HookApp) -> None:
    server = await make_server(hooks=app.settings())
    async with http_client(server) as http:
        for _ in range(5):
            assert (await http.get("/channels/news", headers=ALICE)).status_code == 200
    # Ten calls one after another (connect, subscribe) over one kept-alive connection.
    assert len(app.calls) == 10
    assert len({call.peer for call in app.calls}) == 1


async def test_the_claims_of_a_token_reach_connect(make_server: ServerFactory,
                                                   app: HookApp) -> None:
    import jwt

    secret = "s" * 32
    server = await make_server(hooks=app.settings(),
                               auth=_auth(jwt_hs256_secret=secret, default_subscribe="token"))
    token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 600,
                        "channels": {"subscribe": ["news"]}}, secret)
    async with http_client(server) as http:
        await http.get("/channels/news", headers={**ALICE, "Authorization": f"Bearer {token}"})
    (call,) = app.of("connect")
    assert call.body["claims"]["sub"] == "carol"
    assert call.body["claims"]["subscribe"] == ["news"]


def _auth(**values: Any) -> Any:
    from tidings.settings import AuthSettings

    return AuthSettings(**values)


# failures ------------------------------------------------------------------------------


async def _reads_and_publish(server: Server) -> list[tuple[int, str | None]]:
    answers = [await read_status(server, technique, "/channels/news", ALICE)
               for technique in TECHNIQUES]
    async with http_client(server) as http:
        published = await post(http, "news", 1, headers=ALICE)
    answers.append((published.status_code, published.json().get("error")))
    return answers


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_failing_connect_hook_answers_a_retryable_503(
        make_server: ServerFactory, app: HookApp, failure: str) -> None:
    server = await make_server(hooks=app.settings(timeout=0.3 * UNIT))
    app.failing["connect"] = failure
    answers = await _reads_and_publish(server)
    assert answers == [(503, "hook_unavailable")] * 5
    assert server.health()["published"] == 0
    assert app.of("subscribe") == app.of("publish") == []


@pytest.mark.parametrize("failure", ANSWER_FAILURES)
async def test_a_failing_subscribe_hook_answers_a_retryable_503(
        make_server: ServerFactory, app: HookApp, failure: str) -> None:
    server = await make_server(hooks=app.settings(timeout=0.3 * UNIT))
    app.failing["subscribe"] = failure
    answers = [await read_status(server, technique, "/channels/news", ALICE)
               for technique in TECHNIQUES]
    async with alice_ws(server) as ws:
        reply = await command(ws, type="subscribe", req=1, channel="news")
    assert answers == [(503, "hook_unavailable")] * 4
    assert (reply["type"], reply["error"]) == ("error", "hook_unavailable")


@pytest.mark.parametrize("failure", ANSWER_FAILURES)
async def test_a_failing_publish_or_rpc_hook_answers_a_retryable_503(
        make_server: ServerFactory, app: HookApp, failure: str) -> None:
    server = await make_server(hooks=app.settings(timeout=0.3 * UNIT))
    app.failing["publish"] = app.failing["rpc"] = failure
    async with http_client(server) as http:
        published = await post(http, "news", 1, headers=ALICE)
        async with alice_ws(server) as ws:
            ws_published = await command(ws, type="publish", req=1, channel="news", data=2)
            rpc = await command(ws, type="rpc", req=2, method="typing")
        news = await poll(http, "/channels/news", headers=ALICE, since="0")
    require_error(published, 503, "hook_unavailable", f"a publish whose hook is {failure}")
    assert (ws_published["type"], ws_published["error"]) == ("error", "hook_unavailable")
    assert (rpc["type"], rpc["error"]) == ("error", "hook_unavailable")
    assert news["messages"] == []
    assert server.health()["published"] == 0


async def test_a_hook_server_that_is_down_answers_a_retryable_503(
        make_server: ServerFactory) -> None:
    down = closed_port_url()
    server = await make_server(hooks=HooksSettings(
        connect_url=f"{down}/connect", publish_url=f"{down}/publish", timeout=2 * UNIT))
    answers = await _reads_and_publish(server)
    assert answers == [(503, "hook_unavailable")] * 5
    assert server.health()["published"] == 0


async def test_failures_are_logged_without_what_the_client_sent(
        make_server: ServerFactory, app: HookApp, caplog: pytest.LogCaptureFixture) -> None:
    server = await make_server(hooks=app.settings(forward_headers=("x-request-id",)))
    app.failing["connect"] = "status_500"
    with caplog.at_level(logging.WARNING, logger="tidings.server"):
        async with http_client(server) as http:
            for _ in range(3):
                await http.get("/channels/news",
                               headers={**ALICE, "X-Request-Id": "private-request-id"})
    warnings = [r.getMessage() for r in caplog.records if "hook" in r.getMessage()]
    assert len(warnings) == 1, warnings  # the next failures are counted, not logged
    assert server.hooks.failures["on_connect", "error"] == 3  # /metrics counts every one
    assert "connect" in warnings[0] and "500" in warnings[0] and app.url in warnings[0]
    text = caplog.text
    assert "s-alice" not in text and "private-request-id" not in text and SECRET not in text


async def test_a_bad_channel_from_connect_is_a_failure(make_server: ServerFactory,
                                                       app: HookApp) -> None:
    server = await make_server(hooks=app.settings(timeout=0.3 * UNIT))

    async def bad_channels(body: dict[str, Any]) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"user": "alice", "channels": ["no spaces allowed"]})

    app.connect = bad_channels  # type: ignore[method-assign]
    async with http_client(server) as http:
        answer = await http.get("/channels/news", headers=ALICE)
    require_error(answer, 503, "hook_unavailable", "a connect answer naming a bad channel")


async def test_an_in_process_hook_replaces_the_http_one(make_server: ServerFactory,
                                                        app: HookApp) -> None:
    server = await make_server(hooks=app.settings())

    @server.on_subscribe
    async def everything(user: str | None, channel: str) -> None:
        return None

    async with http_client(server) as http:
        mine = await http.get("/channels/private:bob", headers=ALICE)
    assert mine.status_code == 200
    assert app.of("subscribe") == [] and len(app.of("connect")) == 1


async def test_closing_the_server_closes_its_connections_to_the_application(
        app: HookApp) -> None:
    from tidings import Settings

    server = Server(Settings(host="127.0.0.1", port=0, hooks=app.settings()))
    async with server, http_client(server) as http:
        assert (await http.get("/channels/news", headers=ALICE)).status_code == 200
        assert app.open_connections() == 1
    await until(lambda: app.open_connections() == 0)


async def test_http_hooks_apply_through_the_asgi_mount(app: HookApp) -> None:
    from asgikit import mounted

    async with mounted("uvicorn", hooks=app.settings()) as mount, \
            httpx.AsyncClient(base_url=mount.url, timeout=10 * UNIT) as http:
        anonymous = await http.get("/channels/news")
        theirs = await http.get("/channels/private:bob", headers=ALICE)
        replaced = await http.post("/channels/shout", json="asgi", headers=ALICE)
        shout = await poll(http, "/channels/shout", headers=ALICE, since="0")
    require_error(anonymous, 401, "login_required", "an anonymous read through the mount")
    require_error(theirs, 403, "not_yours", "another user's channel through the mount")
    assert replaced.status_code == 201
    assert shout["messages"][0]["data"] == {"from": "alice", "text": "ASGI"}


async def test_a_slow_hook_holds_only_its_own_client(make_server: ServerFactory,
                                                     app: HookApp) -> None:
    """While one request waits for a slow hook, other clients are served."""
    server = await make_server(hooks=app.settings(timeout=1 * UNIT))
    app.failing["connect"] = "slow"
    async with http_client(server) as http:
        waiting = asyncio.ensure_future(http.get("/channels/news", headers=ALICE))
        await until(lambda: app.of("connect"))
        del app.failing["connect"]
        other = await http.get("/channels/news", headers=ALICE)
        published = await post(http, "news", 1, headers=ALICE)
        slow = await waiting
    assert other.status_code == 200 and published.status_code == 201
    require_error(slow, 503, "hook_unavailable", "the client whose hook was slow")


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP
    b"",  # closed without a word
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",  # closed mid-body
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}",  # cut mid-chunks
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",  # cut in the head
])
async def test_an_answer_that_breaks_http_is_a_failure(make_server: ServerFactory,
                                                       answer: bytes) -> None:
    """Raw servers: whatever comes back that is not a whole HTTP answer is a 503."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        server = await make_server(hooks=HooksSettings(
            connect_url=f"http://127.0.0.1:{port}/connect", timeout=2 * UNIT))
        async with http_client(server) as http:
            refused = await http.get("/channels/news")
    finally:
        raw.close()
    require_error(refused, 503, "hook_unavailable", f"a hook answering {answer[:30]!r}")


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
async def test_an_answer_that_ends_with_the_connection_is_read(
        make_server: ServerFactory, version: bytes) -> None:
    """No length, no chunks: the body ends where the connection does (HTTP/1.0, Django's
    runserver without CommonMiddleware)."""
    calls = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/%s 200 OK\r\nContent-Type: application/json\r\n\r\n"
                     b'{"user": "carol"' % version)
        await writer.drain()
        writer.write(b"}")
        writer.close()

    raw = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        server = await make_server(hooks=HooksSettings(
            connect_url=f"http://127.0.0.1:{port}/connect", timeout=2 * UNIT))
        async with http_client(server) as http:
            answers = [await http.get("/channels/news") for _ in range(2)]
    finally:
        raw.close()
    assert [answer.status_code for answer in answers] == [200, 200]
    assert calls == 2  # a connection each: none is kept


async def test_chunked_answers_are_read(make_server: ServerFactory, app: HookApp) -> None:
    server = await make_server(hooks=app.settings())
    app.chunked = True
    async with http_client(server) as http:
        anonymous = await http.get("/channels/news")
        replaced = await publish(http, "shout", "chunks", headers=ALICE)
        shout = await poll(http, "/channels/shout", headers=ALICE, since="0")
    require_error(anonymous, 401, "login_required", "a chunked refusal")
    assert shout["messages"][0]["id"] == replaced
    assert shout["messages"][0]["data"] == {"from": "alice", "text": "CHUNKS"}


async def test_a_connection_the_application_closed_while_idle_is_replaced(
        make_server: ServerFactory) -> None:
    """uvicorn closes connections idle for 0.05 s: the next call opens a new one and
    succeeds, rather than failing on the closed one."""
    async with hook_app(keep_alive=0.05) as app:
        server = await make_server(hooks=app.settings(subscribe_url=""))
        async with http_client(server) as http:
            first = await http.get("/channels/news", headers=ALICE)
            await until(lambda: app.open_connections() == 0)
            second = await http.get("/channels/news", headers=ALICE)
    assert (first.status_code, second.status_code) == (200, 200)
    assert len({call.peer for call in app.calls}) == 2


async def test_calls_beyond_the_connection_limit_wait_for_a_connection(
        make_server: ServerFactory, app: HookApp, monkeypatch: pytest.MonkeyPatch) -> None:
    from tidings.server import hooks_http

    monkeypatch.setattr(hooks_http, "MAX_CONNECTIONS", 3)
    server = await make_server(hooks=app.settings(timeout=10 * UNIT, subscribe_url=""))
    app.failing["connect"] = "slow"
    async with http_client(server) as http:
        reads = [asyncio.ensure_future(http.get("/channels/news", headers=ALICE))
                 for _ in range(6)]
        await until(lambda: len(app.calls) == 3)
        held = app.open_connections()
        app.release.set()  # the three answer; the three others go over their connections
        answers = await asyncio.gather(*reads)
    assert held == 3
    assert [answer.status_code for answer in answers] == [200] * 6
    assert len(app.calls) == 6
    assert len({call.peer for call in app.calls}) == 3


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=30 * UNIT)
    assert made.returncode == 0, made.stderr
    return cert, key


async def test_hooks_over_https(make_server: ServerFactory, certificate: tuple[Path, Path],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The application's certificate is checked against the trusted ones (here, itself)."""
    cert, key = certificate
    async with hook_app(tls=(str(cert), str(key))) as app:
        untrusted = await make_server(hooks=app.settings(subscribe_url=""))
        async with http_client(untrusted) as http:
            refused = await http.get("/channels/news", headers=ALICE)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = await make_server(hooks=app.settings(subscribe_url=""))
        async with http_client(trusted) as http:
            anonymous = await http.get("/channels/news")
            alice = await http.get("/channels/news", headers=ALICE)
    require_error(refused, 503, "hook_unavailable", "an application whose certificate fails")
    require_error(anonymous, 401, "login_required", "an anonymous read over https")
    assert alice.status_code == 200
