"""WebSockets with the ``websockets`` package: connecting, JSON frames, commands."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tidings.server_api import base_urls
from tidings.testing._checks import WAIT, CheckFailed, ServerAddress, fail_after, require, url_of


def ws_url(server: ServerAddress, path: str = "") -> str:
    """The ``ws://`` (or ``wss://``) URL of ``path`` (which may carry a query) on ``server``."""
    return base_urls(url_of(server))[1] + path


@contextlib.asynccontextmanager
async def open_ws(server: ServerAddress, path: str, *, within: float | None = WAIT,
                  **options: Any) -> AsyncIterator[ClientConnection]:
    """A ``websockets`` connection to ``path``; leaving the block closes it.

    The handshake and the closing handshake may each take ``within``
    seconds. Frames queue without limit unless ``options`` (passed to
    ``websockets.connect``) say otherwise, so closing never waits behind
    unread frames.
    """
    settings: dict[str, Any] = {"max_size": None, "max_queue": None,
                                "open_timeout": within, "close_timeout": within, **options}
    async with fail_after(within, f"opening a WebSocket on {path}"):
        ws = await ws_connect(ws_url(server, path), **settings)
    async with ws:
        yield ws


async def recv_json(ws: ClientConnection, within: float | None = WAIT) -> dict[str, Any]:
    """The next frame, which must be a JSON object with a ``"type"``, in a text frame."""
    async with fail_after(within, "waiting for a WebSocket frame"):
        frame = await ws.recv()
    require(isinstance(frame, str), f"a server frame is binary, not JSON text: {frame!r}")
    try:
        value = json.loads(frame)
    except ValueError:
        raise CheckFailed(f"a server frame is not JSON: {frame!r}") from None
    require(isinstance(value, dict) and isinstance(value.get("type"), str),
            f'a server frame must be an object with a "type": {frame!r}')
    return dict(value)


async def recv_messages(ws: ClientConnection, count: int,
                        within: float | None = WAIT) -> list[dict[str, Any]]:
    """The next ``count`` frames, all within ``within``; each must be ``"type": "message"``."""
    frames: list[dict[str, Any]] = []
    async with fail_after(within, f"waiting for {count} message frames"):
        while len(frames) < count:
            frame = await recv_json(ws, within=None)
            require(frame["type"] == "message", f"expected a message frame, got {frame!r}")
            frames.append(frame)
    return frames


async def command(ws: ClientConnection, others: list[dict[str, Any]] | None = None, *,
                  within: float | None = WAIT, **fields: Any) -> dict[str, Any]:
    """Send the command ``fields``; return the ``ack`` or ``error`` frame that echoes its ``req``.

    Frames that arrive before the answer are appended to ``others``; without
    that list, any such frame fails.
    """
    await ws.send(json.dumps(fields))
    async with fail_after(within, f"waiting for the answer to {fields}"):
        while True:
            frame = await recv_json(ws, within=None)
            if frame["type"] in ("ack", "error") and frame.get("req") == fields.get("req"):
                return frame
            if others is None:
                raise CheckFailed(f"unexpected frame before the answer to {fields}: {frame!r}")
            others.append(frame)
