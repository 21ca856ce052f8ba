"""Presence: every reader has a client id, and each technique's reader is listed while it reads.

Skipped on a server whose ``conformance`` namespace has no presence
(``404 presence_disabled``): presence is switched on per namespace.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tidings.conformance._context import Context, NotApplicable, labelled
from tidings.testing import (
    json_body,
    open_sse,
    open_ws,
    recv_json,
    require,
    require_equal,
    require_error,
)

#: The response header naming a reader's client id (docs/protocol.md).
CLIENT_HEADER = "Tidings-Client"


async def _members(http: httpx.AsyncClient, channel: str) -> dict[str, dict[str, Any]]:
    answer = json_body(await http.get(f"/channels/{channel}/presence"), "a presence answer")
    require(isinstance(answer, dict) and isinstance(answer.get("members"), list)
            and answer.get("channel") == channel and answer.get("count") == len(
                answer["members"]) and isinstance(answer.get("users"), int),
            "a presence answer is {channel, count, users, members: [...]}, "
            f"not {answer!r}"[:300])
    return {member["client"]: member for member in answer["members"]}


async def _until_listed(ctx: Context, http: httpx.AsyncClient, channel: str,
                        expected: dict[str, str]) -> None:
    """Until the member list is ``expected`` (client -> technique), within one step."""
    listed: dict[str, str] = {}
    async with ctx.step(f"waiting for the members of {channel} to be {expected}, "
                        f"not {listed}"):
        while True:
            listed = {client: str(m.get("technique")) for client, m in
                      (await _members(http, channel)).items()}
            if listed == expected:
                return
            await asyncio.sleep(0.05)


async def presence(ctx: Context) -> None:
    """Client ids on every technique; members listed while they read; a closed one leaves."""
    channel = ctx.channel("presence")
    async with ctx.http() as http, ctx.http() as streams:
        response = await http.get(f"/channels/{channel}/presence")
        if response.status_code == 404 and json_body(response, "").get(
                "error") == "presence_disabled":
            raise NotApplicable("presence is off for the conformance namespace "
                                "([namespaces.conformance] presence = true turns it on)")
        await _members(http, channel)
        with labelled("a bad client id"):
            require_error(await http.get(f"/channels/{channel}", params={"client": "a b"}),
                          400, "invalid_client", "a poll with ?client=a b")
        expected: dict[str, str] = {}
        if ctx.serves("poll"):
            with labelled("poll"):
                answer = await http.get(f"/channels/{channel}", params={"client": "cf-poll"})
                require_equal(answer.headers.get(CLIENT_HEADER), "cf-poll",
                              "the Tidings-Client header of a poll")
                expected["cf-poll"] = "poll"
        parked: asyncio.Task[httpx.Response] | None = None
        if ctx.serves("longpoll"):
            start = json_body(await http.get(f"/channels/{channel}"), "a poll")["next"]
            parked = asyncio.create_task(streams.get(f"/channels/{channel}", params={
                "client": "cf-longpoll", "since": start, "wait": "30"}))
            expected["cf-longpoll"] = "longpoll"
        try:
            async with open_sse(streams, f"/channels/{channel}", {"client": "cf-sse"}) as sse:
                with labelled("sse"):
                    opening = await sse.opening()
                    require_equal(opening.json().get("client"), "cf-sse",
                                  "the client id in an SSE stream's first event")
                expected["cf-sse"] = "sse"
                async with open_ws(ctx.url, f"/channels/{channel}?client=cf-ws") as ws:
                    with labelled("websocket"):
                        first = await recv_json(ws)
                        require_equal(first.get("client"), "cf-ws",
                                      "the client id in a WebSocket's first frame")
                    expected["cf-ws"] = "websocket"
                    await _until_listed(ctx, http, channel, expected)
                del expected["cf-ws"]  # a WebSocket that closed leaves at once
                await _until_listed(ctx, http, channel, expected)
        finally:
            if parked is not None:
                parked.cancel()
