"""Installing and removing the bridge, its clear errors, and the ``tidings bridge`` command."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from pgkit import Pg, long_poll, make_bridge
from pgkit import pg_fixture as pg_fixture  # the pg fixture

from conftest import UNIT, ServerFactory
from tidings import Server
from tidings.bridges.postgres import attach, check_sources, install, uninstall
from tidings.cli import main
from tidings.errors import UsageError
from tidings.settings import BridgeConfig, Settings


async def triggers(pg: Pg, table: str) -> int:
    rows = await pg.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass "
                            "AND NOT tgisinternal", [f"{pg.tables}.{table}"])
    return int(rows[0][0])


async def test_install_is_idempotent_and_uninstall_removes_it(pg: Pg) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY, price numeric)")
    table = f"{pg.tables}.prices"
    for template in ["prices:{symbol}", "prices:{symbol}", "quotes:{symbol}"]:
        await install(pg.conn, table, template, pg.outbox)
    assert await triggers(pg, "prices") == 1
    sources = await check_sources(pg.conn, pg.outbox)
    assert [(s.table, s.template) for s in sources] == [(table, "quotes:{symbol}")]
    await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
    assert await pg.pending() == 1
    # Without the table's trigger, changes stop; those waiting stay to be published.
    assert await uninstall(pg.conn, table, pg.outbox) == 1
    assert await uninstall(pg.conn, table, pg.outbox) == 1
    assert await triggers(pg, "prices") == 0
    await pg.execute("INSERT INTO {s}.prices VALUES ('MSFT', 1)")
    assert await pg.pending() == 1
    assert await uninstall(pg.conn, None, pg.outbox) == 1
    assert await uninstall(pg.conn, None, pg.outbox) == 0
    rows = await pg.execute("SELECT to_regnamespace(%s)", [pg.outbox])
    assert rows == [(None,)]


async def test_a_table_without_a_primary_key_is_refused(pg: Pg) -> None:
    await pg.execute("CREATE TABLE {s}.log (line text)")
    with pytest.raises(UsageError, match=r"log has no primary key.*ADD PRIMARY KEY"):
        await install(pg.conn, f"{pg.tables}.log", "log", pg.outbox)
    assert await triggers(pg, "log") == 0


async def test_a_template_naming_a_missing_column_is_refused(pg: Pg) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY)")
    with pytest.raises(UsageError, match=r"names column 'ticker', which table .*prices does "
                                         r"not have \(its columns: symbol\)"):
        await install(pg.conn, f"{pg.tables}.prices", "prices:{ticker}", pg.outbox)
    with pytest.raises(UsageError, match="no table"):
        await install(pg.conn, f"{pg.tables}.nothing", "x", pg.outbox)


async def test_the_bridge_checks_templates_when_it_starts(pg: Pg, server: Server) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY, ticker text)")
    await install(pg.conn, f"{pg.tables}.prices", "prices:{ticker}", pg.outbox)
    await pg.execute("ALTER TABLE {s}.prices DROP COLUMN ticker")
    bridge = make_bridge(pg, server)
    with pytest.raises(UsageError, match="names column 'ticker'"):
        async with asyncio.timeout(5 * UNIT):
            await bridge.run()
    assert bridge.health()["state"] == "failed"
    assert "ticker" in str(bridge.health()["error"])


async def test_a_bridge_with_nothing_installed_says_what_to_do(pg: Pg, server: Server) -> None:
    bridge = make_bridge(pg, server)
    with pytest.raises(UsageError, match="tidings bridge install"):
        async with asyncio.timeout(5 * UNIT):
            await bridge.run()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_database_is_retried_and_shown_in_healthz(
        make_server: ServerFactory) -> None:
    server = await make_server()
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    [bridge] = attach(server, [BridgeConfig(dsn)])
    bridge.backoff = type(bridge.backoff)(initial=0.01, maximum=0.05)
    async with asyncio.timeout(5 * UNIT):
        while bridge.failures < 3:  # each failure is an attempt that was retried
            bridge.changed.clear()
            await bridge.changed.wait()
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{server.url}/healthz")).json()
    [shown] = health["bridges"]
    assert shown["state"] == "starting"  # it never installed its capture
    assert shown["failures"] >= 3
    assert "database" in shown["error"]
    assert shown["database"].startswith("127.0.0.1:")


async def test_healthz_says_starting_until_the_capture_is_installed(
        make_server: ServerFactory) -> None:
    server = await make_server()
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    [bridge] = attach(server, [BridgeConfig(dsn, tables=(("prices", "prices:{symbol}"),))])
    bridge.backoff = type(bridge.backoff)(initial=0.01, maximum=0.05)
    async with asyncio.timeout(5 * UNIT):
        while bridge.failures < 1:  # a first attempt failed
            bridge.changed.clear()
            await bridge.changed.wait()
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "starting"
    assert [shown["state"] for shown in response.json()["bridges"]] == ["starting"]


async def test_a_change_committed_once_healthz_is_ok_is_published(
        pg: Pg, make_server: ServerFactory) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY, price numeric)")
    server = await make_server()
    [bridge] = attach(server, [BridgeConfig(pg.dsn, pg.outbox,
                                            ((f"{pg.tables}.prices", "prices:{symbol}"),))])
    assert server.health()["status"] == "starting"
    async with asyncio.timeout(5 * UNIT):
        await bridge.installed.wait()
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    # The first change after "ok" is captured even if the bridge has not started reading.
    await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
    [message] = await long_poll(server.url, "prices:AAPL", 1)
    assert message["data"]["row"] == {"symbol": "AAPL", "price": 1}


async def test_config_file_bridges_install_and_publish(pg: Pg, make_server: ServerFactory,
                                                       tmp_path: Path) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY, price numeric)")
    path = tmp_path / "tidings.toml"
    path.write_text(f'[[bridges]]\ndsn = "{pg.dsn}"\nschema = "{pg.outbox}"\n'
                    f'tables = [{{table = "{pg.tables}.prices", channel = "prices:{{symbol}}"}}]\n')
    settings = Settings.from_file(path)
    server = await make_server()
    [bridge] = attach(server, settings.bridges)
    async with asyncio.timeout(5 * UNIT):
        await bridge.running.wait()
    await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
    [message] = await long_poll(server.url, "prices:AAPL", 1)
    assert message["data"]["row"] == {"symbol": "AAPL", "price": 1}
    assert server.health()["bridges"] == [bridge.health()]


@pytest.mark.parametrize(("text", "error"), [
    ('bridges = "x"', "bridges"),
    ("[[bridges]]\nschema = 'x'", "dsn must be"),
    ("[[bridges]]\ndsn = 'x'\nport = 1", "unknown key 'port'"),
    ("[[bridges]]\ndsn = 'x'\ntables = [{table = 't'}]", "table and channel"),
    ("[[bridges]]\ndsn = 'x'\ntables = 't'", "tables must be a list"),
])
def test_bad_bridge_entries_in_the_config_file(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=error):
        Settings.from_file(path)


async def test_the_command(pg: Pg, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY, price numeric)")
    await pg.execute("CREATE TABLE {s}.log (line text)")
    table, schema = f"{pg.tables}.prices", ["--schema", pg.outbox]

    def run(*args: str) -> int:
        return main(["bridge", *args])

    async def tidings(*args: str) -> int:
        return await asyncio.to_thread(run, *args)

    assert await tidings("install", pg.dsn, "--table", table, "--channel", "p:{symbol}",
                         *schema) == 0
    assert await tidings("install", pg.dsn, "--table", table, "--channel", "p:{symbol}",
                         *schema) == 0
    assert await tidings("install", pg.dsn, "--table", f"{pg.tables}.log", "--channel", "l",
                         *schema) == 2
    assert await tidings("install", pg.dsn, "--table", table, "--channel", "p:{nope}",
                         *schema) == 2
    await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
    assert await tidings("status", pg.dsn, *schema) == 0
    unreachable = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    assert await tidings("status", unreachable) == 1
    out, err = capsys.readouterr()
    assert "capturing" in out and "1 change(s) waiting" in out
    assert "no primary key" in err and "names column 'nope'" in err and "database:" in err
    assert await tidings("uninstall", pg.dsn, *schema) == 0
    assert "1 unpublished change(s) dropped" in capsys.readouterr().out
