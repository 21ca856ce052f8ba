"""The operators' switch: ``transports`` turns reading techniques off.

Every technique is asked for by a client we did not write (httpx for poll,
long poll and SSE; the ``websockets`` package for the upgrade); a disabled one
is refused with ``403 transport_disabled`` — the WebSocket before its handshake.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import tidings
from conftest import UNIT, ServerFactory
from tidings import Server, Settings, UsageError
from tidings.cli import build_parser, load_settings, main

ALL = ("websocket", "sse", "longpoll", "poll")


async def read_with(server: Server, technique: str) -> tuple[int, dict[str, object] | None]:
    """Read channel ``t`` of ``server`` with ``technique``: the status and any JSON error body."""
    if technique == "websocket":
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/channels/t",
                               open_timeout=5 * UNIT):
                return 101, None
        except InvalidStatus as exc:
            body = json.loads(exc.response.body or b"null")
            return exc.response.status_code, body
    params = {"wait": "0"} if technique == "longpoll" else {}
    headers = {"Accept": "text/event-stream"} if technique == "sse" else {}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client,
        client.stream("GET", "/channels/t", params=params, headers=headers) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.json()
        if technique == "sse":
            assert response.headers["content-type"] == "text/event-stream"
        return 200, None


# Settings and the command line -------------------------------------------------


def test_all_four_by_default() -> None:
    assert Settings().transports == ALL


def test_any_subset_in_any_order() -> None:
    assert Settings(transports=("poll", "sse")).transports == ("poll", "sse")
    assert Settings().replace(transports=["sse", "sse"]).transports == ("sse",)


@pytest.mark.parametrize("transports", [("websocket", "comet"), ("SSE",), ()])
def test_unknown_or_no_transport_is_a_usage_error(transports: tuple[str, ...]) -> None:
    with pytest.raises(UsageError, match="transport"):
        Settings(transports=transports)


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text('[server]\ntransports = ["longpoll", "poll"]\n')
    assert Settings.from_file(path).transports == ("longpoll", "poll")
    path.write_text('[server]\ntransports = ["websockets"]\n')
    with pytest.raises(UsageError, match=r"tidings\.toml.*websockets"):
        Settings.from_file(path)
    path.write_text('[server]\ntransports = "sse"\n')
    with pytest.raises(UsageError, match="list of strings"):
        Settings.from_file(path)


def test_command_line_flag(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--transports", "sse, poll"])
    assert load_settings(args).transports == ("sse", "poll")
    path = tmp_path / "tidings.toml"
    path.write_text('[server]\ntransports = ["poll"]\n')
    args = build_parser().parse_args(["serve", "--config", str(path), "--transports", "sse"])
    assert load_settings(args).transports == ("sse",)  # the flag overrides the file
    args = build_parser().parse_args(["serve", "--config", str(path)])
    assert load_settings(args).transports == ("poll",)


@pytest.mark.parametrize("value", ["websocket,carrier-pigeon", ",", ""])
def test_command_line_unknown_name_exits_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0", "--transports", value]) == 2
    err = capsys.readouterr().err
    assert "--transports" in err and "Traceback" not in err


# The server ----------------------------------------------------------------------


@pytest.mark.parametrize("enabled", ALL)
async def test_only_the_enabled_technique_reads(make_server: ServerFactory, enabled: str) -> None:
    server = await make_server(transports=(enabled,))
    for technique in ALL:
        status, body = await read_with(server, technique)
        if technique == enabled:
            assert status in (101, 200), (technique, body)
        else:
            assert status == 403, technique
            assert body is not None and body["error"] == "transport_disabled"
            message = str(body["message"])
            assert technique in message and enabled in message


async def test_every_technique_reads_by_default(server: Server) -> None:
    for technique in ALL:
        status, body = await read_with(server, technique)
        assert status in (101, 200), (technique, body)


async def test_multi_channel_reads_are_switched_too(make_server: ServerFactory) -> None:
    server = await make_server(transports=("websocket", "longpoll"))
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        refused = await client.get("/subscribe", params={"channel": ["a", "b"]})
        assert refused.status_code == 403
        assert refused.json()["error"] == "transport_disabled"
        allowed = await client.get("/subscribe", params={"channel": ["a", "b"], "wait": "0"})
        assert allowed.status_code == 200


async def test_publishing_is_never_switched_off(make_server: ServerFactory) -> None:
    server = await make_server(transports=("poll",))
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        published = await client.post("/channels/t", json={"x": 1})
        assert published.status_code == 201
        read = await client.get("/channels/t", params={"since": "0"})
        assert [m["id"] for m in read.json()["messages"]] == [published.json()["id"]]


async def test_refused_websocket_gets_cors_and_the_server_stays_up(
        make_server: ServerFactory) -> None:
    server = await make_server(transports=("sse",))
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{server.port}/subscribe?channel=a",
                           origin="http://page.example", open_timeout=5 * UNIT):
            pass
    response = refused.value.response
    assert response.status_code == 403
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["content-type"] == "application/json"
    status, _ = await read_with(server, "sse")
    assert status == 200


@pytest.mark.parametrize(("enabled", "expected"),
                         [(("sse", "longpoll"), "sse"), (("longpoll", "poll"), "longpoll"),
                          (("poll",), "poll")])
async def test_python_client_falls_back_to_what_is_served(
        make_server: ServerFactory, enabled: tuple[str, ...], expected: str) -> None:
    server = await make_server(transports=enabled)
    async with tidings.connect(server.url, poll_interval=0.05) as client:
        subscription = client.subscribe("fb", since="0")
        message_id = await client.publish("fb", {"n": 1})
        async with asyncio.timeout(10 * UNIT):
            item = await anext(aiter(subscription))
        assert isinstance(item, tidings.Message) and item.id == message_id
        assert subscription.transport == expected
