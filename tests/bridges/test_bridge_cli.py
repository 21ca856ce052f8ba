"""``tidings bridge run`` and ``tidings serve`` with ``[[bridges]]``, as child processes."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import httpx
from pgkit import Pg, long_poll
from pgkit import pg_fixture as pg_fixture  # the pg fixture

from conftest import UNIT
from tidings import Server
from tidings.bridges.postgres import install


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidings", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def stop(process: asyncio.subprocess.Process) -> tuple[int, str]:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10 * UNIT):
        _out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def wait_until_healthy(url: str) -> None:
    """Ask ``/healthz`` until it answers ``200``, as a load balancer's readiness probe does."""
    async with httpx.AsyncClient() as http, asyncio.timeout(10 * UNIT):
        # A probe polls a process we cannot await; the deadline above bounds it.
        while (await http.get(f"{url}/healthz")).status_code != 200:  # noqa: ASYNC110
            await asyncio.sleep(UNIT / 20)


async def test_bridge_run_publishes_to_a_server_over_http(pg: Pg, server: Server) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY, price numeric)")
    await install(pg.conn, f"{pg.tables}.prices", "prices:{symbol}", pg.outbox)
    await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")  # before the bridge runs
    process = await start("bridge", "run", pg.dsn, "--url", server.url, "--schema", pg.outbox)
    try:
        await pg.execute("UPDATE {s}.prices SET price = 2")
        messages = await long_poll(server.url, "prices:AAPL", 2)
    finally:
        code, err = await stop(process)
    assert [m["data"]["op"] for m in messages] == ["insert", "update"]
    assert code == 0, err
    assert "bridge stopped" in err


async def test_bridge_run_stops_with_a_clear_error(pg: Pg, server: Server) -> None:
    process = await start("bridge", "run", pg.dsn, "--url", server.url, "--schema", pg.outbox)
    async with asyncio.timeout(10 * UNIT):
        _out, err = await process.communicate()  # it ends by itself
    assert process.returncode == 2
    # The install command it suggests names the same schema, so it can be pasted as is.
    assert f"tidings bridge install DSN --table T --channel TEMPLATE --schema {pg.outbox}`" \
        in err.decode()


async def test_serve_runs_the_bridges_of_its_config_file(pg: Pg, tmp_path: Path) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY, price numeric)")
    config = tmp_path / "tidings.toml"
    config.write_text(
        f'[[bridges]]\ndsn = "{pg.dsn}"\nschema = "{pg.outbox}"\n'
        f'tables = [{{table = "{pg.tables}.prices", channel = "prices:{{symbol}}"}}]\n')
    process = await start("serve", "--port", "0", "--config", str(config),
                          "--log-level", "warning")
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10 * UNIT):
            line = (await process.stdout.readline()).decode()
        url = line.removeprefix("tidings serving on ").strip()
        assert url.startswith("http://"), line
        # /healthz says "starting" (503) until the bridge has installed the table's capture;
        # from its first "ok" on, every committed change is published.
        await wait_until_healthy(url)
        await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
        [message] = await long_poll(url, "prices:AAPL", 1)
        assert message["data"]["row"]["symbol"] == "AAPL"
    finally:
        code, err = await stop(process)
    assert code == 0, err
