"""``server.asgi`` on its own: run directly by an ASGI server (its lifespan starts and stops
tidings), and called before the application started it."""

from __future__ import annotations

import asyncio
import socket

import httpx
import uvicorn

from conftest import until
from tidings import Server, Settings
from tidings.testing import UNIT, http_client, poll, publish, require_error


async def test_before_start_every_request_answers_503_not_started() -> None:
    server = Server(Settings(host="127.0.0.1", port=0), listen=False)
    transport = httpx.ASGITransport(app=server.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        answer = await http.get("/channels/c")
    require_error(answer, 503, "not_started", "a request before the server started")


async def test_run_directly_its_lifespan_starts_and_stops_the_server() -> None:
    server = Server(Settings(host="127.0.0.1", port=0), listen=False)
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    runner = uvicorn.Server(uvicorn.Config(server.asgi, log_level="warning", lifespan="on"))
    task = asyncio.get_running_loop().create_task(runner.serve(sockets=[sock]))
    try:
        await until(lambda: runner.started or task.done(), 10 * UNIT)
        assert server.started
        async with http_client(url) as http:
            message_id = await publish(http, "c", 1)
            answer = await poll(http, "/channels/c", since="0")
        assert [m["id"] for m in answer["messages"]] == [message_id]
    finally:
        runner.should_exit = True
        async with asyncio.timeout(20 * UNIT):
            await task
        sock.close()
    assert server.closing  # the lifespan's shutdown closed it
