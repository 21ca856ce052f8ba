"""The floor of a Python HTTP server on uvloop: every request answered with canned bytes.

``benchmarks/nchan.py idle-poll --server floor`` runs it in place of tidings: one
``asyncio.Protocol`` whose ``data_received`` writes a fixed ``304`` (a request with
``since=``) or a fixed ``200`` holding a cursor (the first request). No parsing, no
routing, no log: what the event loop, the callback into Python and the kernel cost
per request, which no server built on them can go below. It takes (and ignores)
``tidings serve``'s arguments and prints the same ``serving on`` line.

``FLOOR_WRITE=direct`` in the environment writes each answer with ``os.write`` on
the socket instead of ``transport.write`` (uvloop's buffer and its deferred write),
falling back to the transport for what the socket does not take at once: whether
going around the transport makes the floor any lower.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import uvloop

BODY = b'{"messages":[],"next":"floor-1"}'
FIRST = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
         % (len(BODY), BODY))
NOT_MODIFIED = (b'HTTP/1.1 304 Not Modified\r\nETag: "floor-1"\r\n'
                b"Tidings-Client: 0123456789abcdef\r\n\r\n")


class Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(NOT_MODIFIED if b"since=" in data else FIRST)


class CannedDirect(Canned):
    """Writes on the socket itself while the transport holds nothing (``FLOOR_WRITE=direct``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.fd = transport.get_extra_info("socket").fileno()

    def data_received(self, data: bytes) -> None:
        answer = NOT_MODIFIED if b"since=" in data else FIRST
        sent = 0
        if not self.transport.get_write_buffer_size():
            with contextlib.suppress(BlockingIOError):
                sent = os.write(self.fd, answer)
        if sent < len(answer):
            self.transport.write(answer[sent:])


async def serve(host: str, port: int) -> None:
    protocol = CannedDirect if os.environ.get("FLOOR_WRITE") == "direct" else Canned
    server = await asyncio.get_running_loop().create_server(protocol, host, port, backlog=4096)
    print(f"serving on http://{host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args, _ = parser.parse_known_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
