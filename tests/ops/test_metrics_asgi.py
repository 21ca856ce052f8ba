"""The ASGI mount counts the bytes it writes as the native listener does (``written_bytes``).

tidings mounted in Starlette at ``/rt`` under uvicorn and hypercorn
(tests/embedding/asgikit.py); clients we did not write (httpx, the
``websockets`` package) read through the mount, and ``/rt/metrics`` is parsed
with prometheus_client's parser.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from test_ops_metrics import parse, totals

from tidings.testing import http_client, open_sse, open_ws, poll, publish, recv_json, recv_messages

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "embedding"))
from asgikit import ASGI_SERVERS, mounted

pytestmark = pytest.mark.parametrize("kind", ASGI_SERVERS)


async def written(http: httpx.AsyncClient) -> dict[str, float]:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return totals(parse(response.text), "tidings_written_bytes_total", "technique")


async def test_the_mount_counts_answers_and_streams(kind: str) -> None:
    async with mounted(kind) as app, http_client(app.url) as http:
        before = await written(http)
        assert before == {"http": before["http"], "sse": 0, "websocket": 0}
        await publish(http, "c", {"filler": "x" * 1000})
        answer = await http.get("/channels/c", params={"since": "0"})
        assert answer.status_code == 200
        after = await written(http)
        # The poll's answer was counted (and the publish's, and the first scrape's).
        assert after["http"] - before["http"] > len(answer.content) > 1000

        async with open_sse(http, "/channels/c", {"since": "0"}) as stream, \
                open_ws(app.url, "/channels/c?since=0") as ws:
            await stream.opening()
            (streamed,) = await stream.messages(1)
            assert (await recv_json(ws))["type"] == "subscribed"
            (framed,) = await recv_messages(ws, 1)
            during = await written(http)
            # What the streams handed to the ASGI server: at least the message they carried.
            assert during["sse"] >= len(streamed.data) > 1000
            assert during["websocket"] > 1000
        polled = await poll(http, "/channels/c", since="0")
        assert polled["messages"][0]["id"] == framed["id"]
        closed = await written(http)
        assert closed["sse"] >= during["sse"] and closed["websocket"] >= during["websocket"]
