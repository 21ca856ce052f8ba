"""A TCP load balancer for tests of several nodes: each new connection goes to the first
node (of a list of ports) that accepts it, as a balancer whose health check found the
others down. Bytes are copied both ways until either side closes."""

from __future__ import annotations

import asyncio
import contextlib


class Balancer:
    """A TCP load balancer: each new connection goes to the first node that accepts it."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.routed: list[int] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.ports:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.routed.append(port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        writer.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
