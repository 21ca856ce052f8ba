"""The npm package: ``npm pack`` of the repository, installed into a scratch project, used by Node.

The package ships the very file the server serves at ``/tidings.js`` (package.json
points into ``src/tidings/static``; there is no copy), and Node 20 reads a real
server with it over every technique (WebSocket with ``--experimental-websocket``).
"""

from __future__ import annotations

import asyncio
import json
import tomllib

import httpx
import pytest
from jskit import HERE, ROOT, Packed, packed

from tidings import Server
from tidings.server.static import STATIC_DIR
from tidings.testing import UNIT, publish_many

__all__ = ["packed"]  # fixtures
TECHNIQUES = ["websocket", "sse", "longpoll", "poll"]


def test_package_json_describes_the_served_module() -> None:
    package = json.loads((ROOT / "package.json").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert package["version"] == pyproject["project"]["version"]
    assert package["type"] == "module"
    entry = ROOT / package["exports"]["."]["default"]
    assert entry.resolve() == (STATIC_DIR / "tidings.js").resolve()
    assert (ROOT / package["main"]).resolve() == entry.resolve()


async def test_the_tarball_holds_what_the_server_serves(packed: Packed, server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as http:
        served = (await http.get("/tidings.js")).content
    assert packed.member("src/tidings/static/tidings.js") == served
    installed = packed.project / "node_modules" / "tidings" / "src" / "tidings" / "static"
    assert (installed / "tidings.js").read_bytes() == served
    assert "package.json" in packed.names()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_node_reads_and_publishes_with_the_package(packed: Packed, server: Server,
                                                         technique: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as http:
        ids = await publish_many(http, "prices", [{"n": n} for n in range(3)])
    script = packed.project / "node_reader.mjs"
    script.write_bytes((HERE / "node_reader.mjs").read_bytes())
    flags = ["--experimental-websocket"] if technique == "websocket" else []
    process = await asyncio.create_subprocess_exec(
        packed.node, *flags, str(script), server.url, technique, "prices", "3",
        cwd=packed.project, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        # The process must end by itself once the client is closed: nothing left open.
        async with asyncio.timeout(20 * UNIT):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout.decode().strip().splitlines()[-1])
    assert [m["id"] for m in seen["received"]] == [*ids, seen["published"]]
    assert [m["data"] for m in seen["received"]] == [
        {"n": 0}, {"n": 1}, {"n": 2}, {"from": "node", "technique": technique}]
    assert seen["transport"] == technique
    assert seen["states"] == ["open"]
    assert seen["isTidingsError"] is True


async def test_node_without_a_websocket_reads_with_the_next_technique(packed: Packed,
                                                                      server: Server) -> None:
    # Node 20 without --experimental-websocket has no WebSocket: the default order goes on
    # with SSE rather than retrying the WebSocket for ever; WebSocket alone is refused at once.
    script = packed.project / "no_websocket.mjs"
    script.write_text("""
import { connect, TidingsError } from "tidings";
let refused = null;
try { connect(process.argv[2], { transports: ["websocket"] }); }
catch (error) { refused = error instanceof TidingsError ? error.message : String(error); }
const client = connect(process.argv[2], { attemptTimeout: 3000 });
client.subscribe("news", { since: "0", onMessage: (message) => {
  console.log(JSON.stringify({ refused, id: message.id, transport: client.transport,
                               state: client.state, transports: client.options.transports }));
  client.close();
} });
""")
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as http:
        (sent,) = await publish_many(http, "news", [{"n": 0}])
    process = await asyncio.create_subprocess_exec(
        packed.node, str(script), server.url, cwd=packed.project,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(20 * UNIT):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout.decode())
    assert seen["refused"].startswith("this runtime has no WebSocket")
    assert (seen["id"], seen["transport"], seen["state"]) == (sent, "sse", "open")
    assert seen["transports"] == ["sse", "longpoll", "poll"]
