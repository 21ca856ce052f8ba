"""An application that answers tidings' hooks over HTTP: Starlette under uvicorn, port 0.

It decides as the in-process application of test_embedding_hooks.py does
(users by session cookie; ``private:<user>`` for that user only; publishes on
``shout`` replaced; ``forbidden`` refused; an ``rpc`` echo), and records every
call with its headers. :attr:`HookApp.failing` makes a hook fail in one of
the ways an application does: too slow, an error status, garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tidings.settings import HooksSettings
from tidings.testing import UNIT

SESSIONS = {"s-alice": "alice", "s-bob": "bob"}
SECRET = "a-shared-secret-of-the-application"
#: Ways a hook fails (:attr:`HookApp.failing`).
FAILURES = ("slow", "status_500", "html", "not_an_object", "bad_user", "redirect", "huge")


@dataclass
class Call:
    hook: str
    body: dict[str, Any]
    headers: dict[str, str]
    #: The (address, port) the call came from: the connection tidings used.
    peer: tuple[str, int]


@dataclass
class HookApp:
    url: str
    calls: list[Call] = field(default_factory=list)
    #: hook -> one of :data:`FAILURES`.
    failing: dict[str, str] = field(default_factory=dict)
    #: Set at the end: slow answers wait for it.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    #: Answers sent in chunks (``Transfer-Encoding: chunked``) rather than with a length.
    chunked: bool = False
    runner: uvicorn.Server | None = None

    def open_connections(self) -> int:
        """Connections open to the application now."""
        assert self.runner is not None
        return len(self.runner.server_state.connections)

    def settings(self, **changes: Any) -> HooksSettings:
        """``[hooks]`` naming every hook of this application, and the secret."""
        values: dict[str, Any] = {f"{hook}_url": f"{self.url}/{hook}"
                                  for hook in ("connect", "subscribe", "publish", "rpc")}
        values.update(secret=SECRET, timeout=2 * UNIT, forward_cookies=("session",))
        values.update(changes)
        return HooksSettings(**values)

    def of(self, hook: str) -> list[Call]:
        return [call for call in self.calls if call.hook == hook]

    async def answer(self, request: Request) -> Response:
        hook = request.path_params["hook"]
        body = json.loads(await request.body())
        assert request.client is not None
        self.calls.append(Call(hook, body, dict(request.headers),
                               (request.client.host, request.client.port)))
        assert body["hook"] == hook
        failure = self.failing.get(hook)
        if failure == "slow":
            await self.release.wait()
        elif failure == "status_500":
            return JSONResponse({"error": "database down"}, status_code=500)
        elif failure == "html":
            return Response("<html>ok</html>", media_type="text/html")
        elif failure == "not_an_object":
            return JSONResponse(["allow"])
        elif failure == "bad_user":
            return JSONResponse({"user": 42})
        elif failure == "redirect":
            return Response(status_code=302, headers={"Location": "/login"})
        elif failure == "huge":
            return JSONResponse({"user": "alice", "info": "x" * (2 * 1024 * 1024)})

        if request.headers.get("x-tidings-hook-secret") != SECRET:
            return JSONResponse({"error": "bad_secret", "message": "who are you?"},
                                status_code=403)
        answer: Response = await getattr(self, hook)(body)
        if self.chunked:
            content = answer.body

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(content), 3):
                    yield content[start:start + 3]

            return StreamingResponse(chunks(), status_code=answer.status_code,
                                     media_type="application/json")
        return answer

    async def connect(self, body: dict[str, Any]) -> Response:
        user = SESSIONS.get(body["cookies"].get("session", ""))
        if user is None:
            return JSONResponse({"error": "login_required", "message": "log in first"},
                                status_code=401)
        return JSONResponse({"user": user, "info": {"technique": body["technique"]},
                             "channels": [f"private:{user}"]})

    async def subscribe(self, body: dict[str, Any]) -> Response:
        channel, user = body["channel"], body["user"]
        if channel.startswith("private:") and channel != f"private:{user}":
            return JSONResponse({"error": "not_yours", "message": f"{channel} is not yours"},
                                status_code=403)
        if channel == "html-refusal":
            return Response("<h1>Forbidden</h1>", status_code=403, media_type="text/html")
        return Response(status_code=204)

    async def publish(self, body: dict[str, Any]) -> Response:
        channel, user = body["channel"], body["user"]
        if channel == "forbidden":
            return JSONResponse({"error": "read_only", "message": f"{user} may not publish"},
                                status_code=403)
        if channel == "shout":
            return JSONResponse({"data": {"from": user, "text": str(body["data"]).upper()}})
        return JSONResponse({})

    async def rpc(self, body: dict[str, Any]) -> Response:
        if body["method"] == "secret":
            return JSONResponse({"error": "no_secrets"}, status_code=403)
        return JSONResponse({"result": {"user": body["user"], "method": body["method"],
                                        "echo": body["data"]}})


@contextlib.asynccontextmanager
async def hook_app(keep_alive: float = 5, tls: tuple[str, str] | None = None
                   ) -> AsyncIterator[HookApp]:
    """The application, serving on 127.0.0.1 at a port the kernel picked, until the block
    ends; it closes connections idle for ``keep_alive`` seconds. ``tls``: a certificate
    and key file, to serve https."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    scheme = "https" if tls else "http"
    app = HookApp(f"{scheme}://127.0.0.1:{sock.getsockname()[1]}/hooks")
    starlette = Starlette(routes=[Route("/hooks/{hook}", app.answer, methods=["POST"])])
    runner = uvicorn.Server(uvicorn.Config(starlette, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1,
                                           timeout_keep_alive=keep_alive,
                                           ssl_certfile=tls[0] if tls else None,
                                           ssl_keyfile=tls[1] if tls else None))
    app.runner = runner
    task = asyncio.get_running_loop().create_task(runner.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10 * UNIT):
            while not runner.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield app
    finally:
        app.release.set()
        runner.should_exit = True
        async with asyncio.timeout(20 * UNIT):
            await task
        sock.close()


def closed_port_url() -> str:
    """An http:// URL where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks"
