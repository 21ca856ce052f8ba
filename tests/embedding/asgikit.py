"""ASGI servers for the embedding tests: tidings mounted in Starlette, under uvicorn or hypercorn.

Each runs in the test's event loop on a port the kernel picked, with the
application's lifespan starting and stopping the tidings server
(``async with server:``), as docs/embedding.md shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from tidings import Server, Settings
from tidings.testing import UNIT

#: The ASGI servers every mount test runs under.
ASGI_SERVERS = ["uvicorn", "hypercorn"]


@dataclass
class Mounted:
    """A running host application with tidings mounted at ``/rt``."""

    server: Server
    #: The mount's base URL: ``http://127.0.0.1:PORT/rt`` (what clients are given).
    url: str
    host_url: str


#: The host application's page: tidings.js from the mount, reading through the mount.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>an application with tidings mounted at /rt</title>
<ul id="messages"></ul>
<script type="module">
  import { connect } from "/rt/tidings.js";
  const query = new URLSearchParams(location.search);
  const client = connect(location.origin + "/rt", { transports: [query.get("transport")] });
  window.log = { messages: [], states: [] };
  client.on("state", (state) => window.log.states.push(state));
  client.subscribe(["room"], {
    onMessage: (message) => {
      window.log.messages.push(message);
      const item = document.createElement("li");
      item.textContent = `${message.id} ${JSON.stringify(message.data)}`;
      document.getElementById("messages").append(item);
    },
  });
  window.send = (data) => client.publish("room", data);
</script>
"""


def application(server: Server) -> Starlette:
    """A Starlette application with ``server.asgi`` mounted at ``/rt`` and a page at ``/``."""

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with server:
            yield

    return Starlette(routes=[Route("/", page), Mount("/rt", app=server.asgi)],
                     lifespan=lifespan)


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it: uvicorn, given sockets, would otherwise wait for
    # delayed ACKs between the head and the body of each answer (40 ms a request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def mounted(kind: str, server: Server | None = None,
                  **settings: Any) -> AsyncIterator[Mounted]:
    """Run ``kind`` (uvicorn or hypercorn) serving the application until the block ends."""
    if server is None:
        server = Server(Settings(host="127.0.0.1", port=0).replace(**settings), listen=False)
    app = application(server)
    sock = _listening_socket()
    port = sock.getsockname()[1]
    host_url = f"http://127.0.0.1:{port}"
    if kind == "uvicorn":
        import uvicorn

        # WebSocket pings are the ASGI server's: as often as tidings' heartbeats.
        config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="websockets-sansio",
                                ws_ping_interval=server.settings.heartbeat_interval,
                                # Compression per connection would defeat encode-once
                                # (docs/embedding.md); the conformance suite checks it.
                                ws_per_message_deflate=False,
                                # uvicorn waits for open responses (event streams, long polls)
                                # before the lifespan's shutdown closes them: bound the wait.
                                timeout_graceful_shutdown=max(1, round(2 * UNIT)))
        runner = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(runner.serve(sockets=[sock]))
        try:
            async with asyncio.timeout(10 * UNIT):
                while not runner.started:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.01)
            yield Mounted(server, f"{host_url}/rt", host_url)
        finally:
            runner.should_exit = True
            async with asyncio.timeout(20 * UNIT):
                await task
            sock.close()
    else:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"fd://{sock.fileno()}"]
        config.loglevel = "WARNING"
        config.graceful_timeout = 2 * UNIT
        config.websocket_ping_interval = server.settings.heartbeat_interval
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(10 * UNIT):
                while not server.started:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.01)
            yield Mounted(server, f"{host_url}/rt", host_url)
        finally:
            stop.set()
            async with asyncio.timeout(20 * UNIT):
                await task
            with contextlib.suppress(OSError):  # hypercorn closed it already
                sock.close()
