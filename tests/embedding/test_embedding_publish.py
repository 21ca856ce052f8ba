"""Publishing from application code: ``await server.publish(channel, data)``.

It is checked exactly as an HTTP publish (the same code in server/publish.py)
and counted the same way; the forged-bytes case of issue 14 is a regression
test here. A server is also made outside any event loop, as an application
makes one at import time.
"""

from __future__ import annotations

import asyncio

import pytest

from tidings import BadRequest, ProtocolError, Server, Settings, UsageError
from tidings.testing import http_client, open_sse, poll

#: What issue 14 found on a live SSE stream when it went through the broker raw.
FORGED = b'{"a":\n1}\n\nevent: gap\ndata: {"fake":1}'


async def test_publish_returns_the_message_readers_receive(server: Server) -> None:
    async with http_client(server) as http, open_sse(http, "/channels/news") as stream:
        await stream.opening()
        message = await server.publish("news", {"title": "hello", "n": 1})
        (received,) = await stream.message_objects(1)
    assert received == {"channel": "news", "id": message.id, "time": message.time,
                        "data": {"title": "hello", "n": 1}}
    assert message.channel == "news"
    assert server.health()["published"] == 1


async def test_json_text_as_bytes_is_compacted_like_an_http_body(server: Server) -> None:
    message = await server.publish("c", b'{ "a" :\n 1 }')
    assert message.data == b'{"a":1}'
    async with http_client(server) as http:
        answer = await poll(http, "/channels/c", since="0")
    assert answer["messages"][0]["data"] == {"a": 1}


async def test_forged_sse_bytes_are_refused_and_reach_nobody(server: Server) -> None:
    async with http_client(server) as http, open_sse(http, "/channels/c") as stream:
        start = (await stream.opening()).id
        for forged in (FORGED, b"not json", b""):
            with pytest.raises(BadRequest) as refused:
                await server.publish("c", forged)
            assert refused.value.code == "invalid_json" and refused.value.status == 400
        # The same text as a JSON string is data, escaped: one message event, no gap.
        text = FORGED.decode()
        message = await server.publish("c", text)
        event = await stream.next_event()
        assert event.event is None and event.id == message.id
        assert event.json()["data"] == text
        answer = await poll(http, "/channels/c", since=start)
    assert [m["data"] for m in answer["messages"]] == [text]
    assert "gap" not in answer
    assert server.health()["published"] == 1  # refusals are not counted


async def test_every_check_of_an_http_publish_applies(make_server) -> None:
    server = await make_server(max_message_size=64)
    with pytest.raises(ProtocolError) as bad_name:
        await server.publish("no spaces", 1)
    assert bad_name.value.code == "invalid_channel"
    with pytest.raises(ProtocolError) as too_big:
        await server.publish("c", "x" * 100)
    assert (too_big.value.code, too_big.value.status) == ("payload_too_large", 413)
    with pytest.raises(ProtocolError) as not_json:
        await server.publish("c", float("nan"))
    assert not_json.value.code == "invalid_json"
    with pytest.raises(ProtocolError):
        await server.publish("c", {1, 2})
    with pytest.raises(UsageError):
        await server.publish(b"c", 1)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as bad_key:
        await server.publish("c", 1, idempotency_key="no spaces in keys")
    assert bad_key.value.code == "invalid_idempotency_key"
    assert server.health()["published"] == 0


async def test_an_idempotency_key_replays_the_first_message(server: Server) -> None:
    first = await server.publish("c", {"order": 7}, idempotency_key="order-7")
    again = await server.publish("c", {"order": 7}, idempotency_key="order-7")
    assert again.id == first.id
    assert server.health()["published"] == 1


async def test_publishing_before_start_or_after_close_is_a_usage_error() -> None:
    server = Server(Settings(host="127.0.0.1", port=0))
    with pytest.raises(UsageError):
        await server.publish("c", 1)
    async with server:
        await server.publish("c", 1)
    with pytest.raises(UsageError):
        await server.publish("c", 2)


#: Made at import time, before any event loop runs, as applications do.
MODULE_SERVER = Server(Settings(host="127.0.0.1", port=0), listen=False)


def test_a_server_made_outside_any_loop_starts_in_one() -> None:
    async def main() -> list[object]:
        async with MODULE_SERVER:
            assert MODULE_SERVER.started
            first = await MODULE_SERVER.publish("c", 1)
            second = await MODULE_SERVER.publish("c", 2)
            return [first.id, second.id, MODULE_SERVER.health()["published"]]

    first, second, published = asyncio.run(main())
    assert published == 2 and first != second
    assert MODULE_SERVER.port == 0  # listen=False: no native listener was opened


def test_a_server_starts_once() -> None:
    server = Server(Settings(host="127.0.0.1", port=0))

    async def twice() -> None:
        async with server:
            pass
        with pytest.raises(UsageError):
            await server.start()

    asyncio.run(twice())
