"""examples/django_publish: a Django project publishes its orders to a separate tidings.

The example runs as its README says (``manage.py migrate``, ``manage.py
runserver``), in child processes, against a real tidings server; subscribers
we did not write (httpx reading Server-Sent Events, ``websockets``) receive
what a Django ``post_save`` signal published with ``tidings.Publisher``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import httpx
from djangokit import EXAMPLE, django

from tidings import Server
from tidings.testing import UNIT, http_client, open_sse, open_ws, poll, recv_json, recv_messages


async def test_an_order_saved_in_django_reaches_subscribers(server: Server,
                                                            tmp_path: Path) -> None:
    async with django(server.url, tmp_path) as (app, _log), \
            http_client(server) as http, \
            open_sse(http, "/channels/orders") as stream, \
            open_ws(server, "/channels/orders") as ws, \
            httpx.AsyncClient(base_url=app, timeout=10 * UNIT) as shop:
        await stream.opening()
        assert (await recv_json(ws))["type"] == "subscribed"
        created = await shop.post("/orders/", json={"item": "book", "quantity": 2})
        assert created.status_code == 201, created.text
        order = created.json()
        paid = await shop.post(f"/orders/{order['id']}/state", json={"state": "paid"})
        assert paid.status_code == 200, paid.text
        sse = await stream.message_objects(2)
        websocket = await recv_messages(ws, 2)
        history = await poll(http, "/channels/orders", since="0")
    assert [m["data"] for m in sse] == [
        {"event": "created", "order": {**order, "state": "new"}},
        {"event": "updated", "order": {**order, "state": "paid", "version": 2}}]
    assert [m["data"] for m in websocket] == [m["data"] for m in sse]
    assert [m["id"] for m in history["messages"]] == [m["id"] for m in sse]
    assert server.health()["published"] == 2


async def test_a_refused_order_publishes_nothing(server: Server, tmp_path: Path) -> None:
    async with django(server.url, tmp_path) as (app, _log), \
            httpx.AsyncClient(base_url=app, timeout=10 * UNIT) as shop:
        refused = await shop.post("/orders/", json={"item": "", "quantity": 2})
        missing = await shop.post("/orders/99/state", json={"state": "paid"})
    assert (refused.status_code, missing.status_code) == (400, 404)
    assert server.health()["published"] == 0


async def test_an_order_is_saved_while_tidings_is_down(tmp_path: Path) -> None:
    """The order is committed; the failed publish is logged, and the view still answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with django(down, tmp_path) as (app, log), \
            httpx.AsyncClient(base_url=app, timeout=30 * UNIT) as shop:
        created = await shop.post("/orders/", json={"item": "lamp"})
        async with asyncio.timeout(10 * UNIT):
            while b"not published to tidings" not in (line := await log.readline()):
                assert line, "the example's log ended"
    assert created.status_code == 201
    assert created.json()["item"] == "lamp"


async def test_the_example_passes_djangos_checks(tmp_path: Path) -> None:
    """The model and its migration agree; the project's settings pass ``manage.py check``."""
    env = {**os.environ, "DJANGO_DATABASE": str(tmp_path / "db.sqlite3")}
    for command in (["check"], ["makemigrations", "--check", "--dry-run"]):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "manage.py", *command, cwd=EXAMPLE, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        async with asyncio.timeout(30 * UNIT):
            output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()
