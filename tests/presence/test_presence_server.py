"""Presence over real sockets: who each reader is, and who is on a channel, on all four techniques.

Readers are clients we did not write (httpx, the websockets package); the
member list is read over HTTP (``GET /channels/{channel}/presence``) once the
server's own table says the change happened (:func:`until`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import ServerFactory, until
from tidings import Server
from tidings.core.policy import Rule
from tidings.core.presence import Identity, PresencePolicy
from tidings.errors import UsageError
from tidings.server.presence import CLIENT_HEADER, MAX_LISTED_MEMBERS
from tidings.settings import AuthSettings, Settings
from tidings.testing import (
    UNIT,
    command,
    http_client,
    open_sse,
    publish,
    recv_json,
    require_error,
    ws_url,
)

SECRET = "presence-test-secret-of-32-bytes-or-more"


def present(server: Server, channel: str) -> int:
    return server.presence.table.count(channel)[0]


async def members(http: httpx.AsyncClient, channel: str) -> dict[str, dict[str, Any]]:
    """The member list of ``channel`` over HTTP, by client id."""
    response = await http.get(f"/channels/{channel}/presence")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["members"])
    return {member["client"]: member for member in body["members"]}


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server(presence=True, presence_timeout=UNIT)


# Identity ------------------------------------------------------------


async def test_a_websocket_is_told_its_client_id_in_its_first_frame(server: Server) -> None:
    async with http_client(server) as http:
        async with connect(ws_url(server, "/channels/c")) as ws:
            first = await recv_json(ws)
            assert first["type"] == "subscribed"
            client = first["client"]
            assert isinstance(client, str) and len(client) >= 16  # assigned: not guessable
            await until(lambda: present(server, "c") == 1)
            assert (await members(http, "c"))[client]["technique"] == "websocket"
        async with connect(ws_url(server, "/channels/c?client=tab-7")) as ws:
            assert (await recv_json(ws))["client"] == "tab-7"
            ack = await command(ws, type="subscribe", req=1, channel="d")
            assert ack["client"] == "tab-7"


async def test_an_sse_stream_is_told_its_client_id_in_its_first_event(server: Server) -> None:
    async with http_client(server) as http:
        async with open_sse(http, "/channels/c") as stream:
            opening = await stream.opening()
            assert opening.event == "client"
            client = opening.json()["client"]
            assert stream.response.headers[CLIENT_HEADER] == client
            assert opening.json()["user"] is None
        async with open_sse(http, "/channels/c", {"client": "mine"}) as stream:
            assert (await stream.opening()).json()["client"] == "mine"


@pytest.mark.parametrize("query", [{}, {"wait": "0"}])
async def test_a_poll_is_told_its_client_id_in_a_header(server: Server,
                                                        query: dict[str, str]) -> None:
    async with http_client(server) as http:
        first = await http.get("/channels/c", params=query)
        second = await http.get("/channels/c", params=query)
        assert first.status_code == second.status_code == 200
        assigned = first.headers[CLIENT_HEADER]
        assert assigned != second.headers[CLIENT_HEADER]  # a fresh one each time
        mine = await http.get("/channels/c", params={**query, "client": "poller-1"})
        assert mine.headers[CLIENT_HEADER] == "poller-1"
        # A 304 says it too.
        tag = mine.headers.get("etag")
        if tag:
            again = await http.get("/channels/c", params={"client": "poller-1",
                                                          "since": mine.json()["next"]},
                                   headers={"If-None-Match": tag})
            assert again.status_code == 304 and again.headers[CLIENT_HEADER] == "poller-1"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "é"])
async def test_a_bad_client_id_is_400_on_every_technique(server: Server, bad: str) -> None:
    async with http_client(server) as http:
        for query in ({"client": bad}, {"client": bad, "wait": "1"}):
            require_error(await http.get("/channels/c", params=query), 400, "invalid_client",
                          "a poll with a bad client id")
        response = await http.get("/channels/c", params={"client": bad},
                                  headers={"Accept": "text/event-stream"})
        require_error(response, 400, "invalid_client", "an SSE stream with a bad client id")
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(server, "/channels/c") + "?" +
                           httpx.QueryParams({"client": bad}).__str__()):
            pass
    assert info.value.response.status_code == 400
    assert json.loads(info.value.response.body)["error"] == "invalid_client"
    assert present(server, "c") == 0


# Joining and leaving, technique by technique ----------------------------------------


async def test_a_websocket_joins_and_leaves_when_it_closes(server: Server) -> None:
    async with http_client(server) as http:
        async with connect(ws_url(server, "/channels/c?client=w1")) as ws:
            await recv_json(ws)
            await until(lambda: present(server, "c") == 1)
            member = (await members(http, "c"))["w1"]
            assert member["technique"] == "websocket" and member["user"] is None
            assert abs(member["since"] - time.time() * 1000) < 60_000
            # Unsubscribing leaves the channel; subscribing again joins it.
            await command(ws, type="unsubscribe", req=1, channel="c")
            assert await members(http, "c") == {}
            await command(ws, type="subscribe", req=2, channel="c")
            assert list(await members(http, "c")) == ["w1"]
        await until(lambda: present(server, "c") == 0)
        assert await members(http, "c") == {}


async def test_an_sse_stream_leaves_when_it_drops(server: Server) -> None:
    async with http_client(server) as http, http_client(server) as reader:
        async with open_sse(reader, "/subscribe", {"channel": ["a", "b"], "client": "s1"}) as sse:
            await sse.opening()
            await until(lambda: present(server, "a") == present(server, "b") == 1)
            assert (await members(http, "b"))["s1"]["technique"] == "sse"
        # The client went away without a word: its socket closed.
        await until(lambda: present(server, "a") == present(server, "b") == 0)


async def test_a_poller_stays_between_polls_and_times_out_when_it_stops(server: Server) -> None:
    async with http_client(server) as http:
        await http.get("/channels/c", params={"client": "p1"})
        assert (await members(http, "c"))["p1"]["technique"] == "poll"
        # Polling again within presence_timeout keeps it: one member, the same since.
        since = (await members(http, "c"))["p1"]["since"]
        await http.get("/channels/c", params={"client": "p1"})
        assert (await members(http, "c"))["p1"]["since"] == since
        stopped = time.monotonic()
        await until(lambda: present(server, "c") == 0, within=5 * UNIT)
        # It left after presence_timeout (1 UNIT), not before.
        assert time.monotonic() - stopped >= 0.9 * UNIT
        assert await members(http, "c") == {}


async def test_a_poll_without_a_client_id_is_not_a_member(server: Server) -> None:
    async with http_client(server) as http:
        for _ in range(3):
            assert (await http.get("/channels/c")).status_code == 200
        assert await members(http, "c") == {}


async def test_a_parked_long_poll_is_present_and_lingers_after_its_answer(
        server: Server) -> None:
    async with http_client(server) as http, http_client(server) as poller:
        start = (await http.get("/channels/c")).json()["next"]
        parked = asyncio.create_task(poller.get("/channels/c", params={
            "since": start, "wait": "30", "client": "lp1"}))
        anonymous = asyncio.create_task(poller.get("/channels/c", params={
            "since": start, "wait": "30"}))
        await until(lambda: present(server, "c") == 2)
        listed = await members(http, "c")
        assert {m["technique"] for m in listed.values()} == {"longpoll"}
        assert "lp1" in listed
        await publish(http, "c", "wake up")
        async with asyncio.timeout(2 * UNIT):
            answered, other = await parked, await anonymous
        assert answered.headers[CLIENT_HEADER] == "lp1"
        assert other.headers[CLIENT_HEADER] in listed
        # The anonymous one left with its answer; the named one stays until it times out.
        assert list(await members(http, "c")) == ["lp1"]
        await until(lambda: present(server, "c") == 0, within=5 * UNIT)


async def test_a_long_poll_that_finds_messages_at_once_counts_as_a_poll(server: Server) -> None:
    async with http_client(server) as http:
        await publish(http, "c", 1)
        answer = await http.get("/channels/c", params={"since": "0", "wait": "5",
                                                      "client": "lp2"})
        assert answer.json()["messages"]
        assert (await members(http, "c"))["lp2"]["technique"] == "longpoll"


async def test_four_techniques_four_members(server: Server) -> None:
    async with http_client(server) as http, http_client(server) as streams:
        start = (await http.get("/channels/c")).json()["next"]
        await http.get("/channels/c", params={"client": "t-poll"})
        parked = asyncio.create_task(streams.get("/channels/c", params={
            "since": start, "wait": "30", "client": "t-longpoll"}))
        async with open_sse(streams, "/channels/c", {"client": "t-sse"}) as sse, \
                connect(ws_url(server, "/channels/c?client=t-ws")) as ws:
            await sse.opening()
            await recv_json(ws)
            await until(lambda: present(server, "c") == 4)
            listed = await members(http, "c")
            assert {client: m["technique"] for client, m in listed.items()} == {
                "t-poll": "poll", "t-longpoll": "longpoll", "t-sse": "sse", "t-ws": "websocket"}
            counted = (await http.get("/channels/c/presence", params={"count": ""})).json()
            assert counted == {"channel": "c", "count": 4, "users": 0}
        parked.cancel()


# Reading presence ------------------------------------------------------------


async def test_the_websocket_presence_command(server: Server) -> None:
    async with connect(ws_url(server, "/channels/c?client=me")) as ws:
        await recv_json(ws)
        await until(lambda: present(server, "c") == 1)
        reply = await command(ws, type="presence", req=1, channel="c")
        assert reply["type"] == "ack" and reply["count"] == 1 and reply["users"] == 0
        assert [m["client"] for m in reply["members"]] == ["me"]
        counted = await command(ws, type="presence", req=2, channel="c", count=True)
        assert "members" not in counted and counted["count"] == 1
        bad = await command(ws, type="presence", req=3, channel="c", count="yes")
        assert bad["type"] == "error" and bad["error"] == "invalid_command"
        off = await command(ws, type="presence", req=4, channel="no:c")
        assert off["type"] == "ack"  # [server] presence applies to every namespace here


async def test_presence_off_is_404_and_counts_nothing(make_server: ServerFactory) -> None:
    server = await make_server(namespace_presence={"live": PresencePolicy(True, 30.0)})
    async with http_client(server) as http:
        response = await http.get("/channels/quiet/presence")
        require_error(response, 404, "presence_disabled", "presence off in [server]")
        assert "[server]" in response.json()["message"]
        await http.get("/channels/quiet", params={"client": "p"})
        await http.get("/channels/live:x", params={"client": "p"})
        assert server.presence.table.count("quiet") == (0, 0)
        assert list(await members(http, "live:x")) == ["p"]
        async with connect(ws_url(server, "/subscribe")) as ws:
            reply = await command(ws, type="presence", req=1, channel="quiet")
            assert (reply["type"], reply["error"]) == ("error", "presence_disabled")
        assert (await http.post("/channels/c/presence", json={})).status_code == 405


async def test_a_channel_named_presence_is_still_a_channel(server: Server) -> None:
    async with http_client(server) as http:
        message_id = await publish(http, "presence", "still a channel")
        answer = (await http.get("/channels/presence", params={"since": "0"})).json()
        assert [m["id"] for m in answer["messages"]] == [message_id]
        assert (await http.get("/channels/presence/presence")).json()["channel"] == "presence"
        require_error(await http.get("/channels//presence"), 400, "invalid_channel",
                      "presence of an empty channel name")


async def test_a_large_channel_lists_a_bounded_number_of_members(server: Server) -> None:
    for number in range(MAX_LISTED_MEMBERS + 5):
        server.presence.touch(["big"], Identity(f"m{number}"), "poll")
    async with http_client(server) as http:
        body = (await http.get("/channels/big/presence")).json()
        assert body["count"] == MAX_LISTED_MEMBERS + 5
        assert len(body["members"]) == MAX_LISTED_MEMBERS and body["more"] is True


# Who: the token's sub and info claim, and the permission to ask ---------------------


def _token(sub: str, info: Any = None, channels: tuple[str, ...] = ("room:*",)) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": time.time() + 600,
                              "channels": {"subscribe": list(channels), "publish": []}}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, SECRET, "HS256")


async def test_user_and_info_come_from_the_token_and_asking_needs_subscribe(
        make_server: ServerFactory) -> None:
    auth = AuthSettings(jwt_hs256_secret=SECRET, rules={"room": Rule("token", "api_key")})
    server = await make_server(auth=auth, presence=True)
    alice = _token("alice", {"name": "Alice", "color": "#f00"})
    async with http_client(server) as http, connect(ws_url(server, "/channels/room:1"),
                       additional_headers={"Authorization": f"Bearer {alice}"}) as ws:
        await recv_json(ws)
        await until(lambda: present(server, "room:1") == 1)
        require_error(await http.get("/channels/room:1/presence"), 401, "token_required",
                      "presence without a token")
        require_error(await http.get("/channels/room:1/presence", headers={
            "Authorization": f"Bearer {_token('eve', channels=('other',))}"}),
            403, "forbidden", "presence without the right to subscribe")
        bob = {"Authorization": f"Bearer {_token('bob')}"}
        await http.get("/channels/room:1", params={"client": "bob-poll"}, headers=bob)
        response = await http.get("/channels/room:1/presence", headers=bob)
        assert response.status_code == 200
        body = response.json()
        assert (body["count"], body["users"]) == (2, 2)
        by_user = {m["user"]: m for m in body["members"]}
        assert by_user["alice"]["info"] == {"name": "Alice", "color": "#f00"}
        assert by_user["bob"]["info"] is None


# Settings ------------------------------------------------------------


def test_presence_settings_from_a_file(tmp_path: Any) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text('[server]\npresence = true\npresence_timeout = 10\n'
                    '[namespaces.chat]\npresence_timeout = 5\n'
                    '[namespaces.prices]\npresence = false\n'
                    '[namespaces.logs]\nhistory_size = 5\n')
    settings = Settings.from_file(path)
    assert settings.presence_of("x") == PresencePolicy(True, 10.0)
    assert settings.presence_of("chat:1") == PresencePolicy(True, 5.0)
    assert settings.presence_of("prices:AAPL") == PresencePolicy(False, 10.0)
    assert settings.presence_of("logs:1") == PresencePolicy(True, 10.0)  # inherits [server]


def test_bad_presence_settings_are_named(tmp_path: Any) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text('[server]\npresence = 1\npresence_timeout = 0\n'
                    '[namespaces.chat]\npresence = "yes"\npresence_timeout = 100000\n')
    with pytest.raises(UsageError) as info:
        Settings.from_file(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert any("[server] presence must be true or false" in line for line in lines)
    assert any("[server] presence_timeout must be more than 0" in line for line in lines)
    assert any("[namespaces.chat] presence must be true or false" in line for line in lines)
    assert any("[namespaces.chat] presence_timeout must be more than 0" in line
               for line in lines)
    with pytest.raises(UsageError):
        Settings(presence_timeout=-1)

