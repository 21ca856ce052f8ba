"""The floor of a Python HTTP server on uvloop: every request answered with canned bytes.

``benchmarks/nchan.py idle-poll --server floor`` runs it in place of tidings: one
``asyncio.Protocol`` whose ``data_received`` writes a fixed ``304`` (a request with
``since=``) or a fixed ``200`` holding a cursor (the first request). No parsing, no
routing, no log: what the event loop, the callback into Python and the kernel cost
per request, which no server built on them can go below. It takes (and ignores)
``tidings serve``'s arguments and prints the same ``serving on`` line.
"""

from __future__ import annotations

import argparse
import asyncio

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


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Canned, host, port, backlog=4096)
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
