"""The database side of the bridge: outbox, trigger function, triggers.

Everything lives in one schema (``tidings`` unless told otherwise)::

    tidings.outbox      one row per committed change not yet published, in ``seq`` order
    tidings.outbox_seq  hands out ``seq`` numbers, in commit order (see below)
    tidings.sources     the tables captured and their channel templates
    tidings.meta        ``source``: a random name for this outbox, put in every message
    tidings.capture()   the trigger function

**Commit order.** A trigger runs inside its own transaction, before that
transaction commits, so a number taken from a sequence when the row is written
says nothing about when the transaction will commit. Here the trigger is a
*deferred constraint trigger*: it runs while the transaction commits, after
its last statement. It first takes a transaction-level advisory lock, then
takes its ``seq`` numbers. The lock is held until the transaction has
committed (or rolled back) *and* its rows are visible (PostgreSQL releases
locks after it publishes the commit). So a transaction that takes numbers
after another one committed first; and whenever the bridge sees a ``seq``, every
smaller ``seq`` that will ever commit is already visible. Reading
``ORDER BY seq`` is therefore reading in commit order, and no row can appear
later behind the bridge's back. The price: commits of transactions that
change captured tables queue for that lock, for as long as a commit takes
(docs/bridge.md).

Every function here takes an open autocommit connection and runs in one
transaction; install and uninstall are idempotent.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shlex
from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from tidings.bridges.template import ChannelTemplate
from tidings.errors import UsageError

DEFAULT_SCHEMA = "tidings"
#: The layout version of the schema's objects, stored in ``meta``.
VERSION = 1
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,49}")


def check_schema(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier, else :class:`UsageError`."""
    if _SCHEMA_RE.fullmatch(schema) is None:
        raise UsageError(f"schema name {schema!r}: use 1 to 50 characters a-z, 0-9, _ "
                         "(not starting with a digit)")
    return schema


def lock_key(schema: str, purpose: str) -> int:
    """A stable signed 64-bit advisory lock key for ``purpose`` in ``schema``."""
    digest = hashlib.blake2b(f"tidings.{purpose}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def notify_channel(schema: str) -> str:
    """The ``LISTEN`` channel the trigger wakes the bridge on."""
    return f"{schema}_outbox"


def trigger_name(schema: str) -> str:
    return f"{schema}_capture"


@dataclass(frozen=True, slots=True)
class Source:
    """A captured table: its name as messages show it, and its channel template."""

    table: str
    template: str


_CREATE = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE SEQUENCE IF NOT EXISTS {schema}.outbox_seq CACHE 1;
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    seq bigint PRIMARY KEY DEFAULT nextval('{schema_text}.outbox_seq'),
    op text NOT NULL,
    table_name text NOT NULL,
    template text NOT NULL,
    pk_columns text[] NOT NULL,
    row json NOT NULL,
    commit_ts timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.sources (
    table_oid oid PRIMARY KEY,
    table_name text NOT NULL,
    template text NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    source text NOT NULL,
    version integer NOT NULL
);
CREATE OR REPLACE FUNCTION {schema}.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $capture$
BEGIN
    -- Runs at commit (a deferred constraint trigger). The lock is held until this
    -- transaction is over, so seq numbers are handed out in commit order.
    PERFORM pg_advisory_xact_lock({lock_key});
    INSERT INTO {schema}.outbox (op, table_name, template, pk_columns, row, commit_ts)
    VALUES (
        lower(TG_OP),
        CASE WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
             ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME END,
        TG_ARGV[0],
        TG_ARGV[1:TG_NARGS - 1],
        CASE WHEN TG_OP = 'DELETE' THEN row_to_json(OLD) ELSE row_to_json(NEW) END,
        clock_timestamp()
    );
    PERFORM pg_notify({notify}, '');
    RETURN NULL;
END
$capture$;
"""


async def install(conn: AsyncConnection, table: str, template: str,
                  schema: str = DEFAULT_SCHEMA) -> Source:
    """Capture ``table``'s changes into the outbox of ``schema``, named by ``template``.

    Idempotent: installing again replaces the template. Raises
    :class:`UsageError` if the table does not exist, has no primary key, or
    the template names a column it lacks.
    """
    check_schema(schema)
    parsed = ChannelTemplate.parse(template)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(schema, "install")])
        oid, nsp, rel = await _resolve(conn, table)
        name = rel if nsp == "public" else f"{nsp}.{rel}"
        columns = await table_columns(conn, oid)
        parsed.check_columns(name, columns)
        pk = await primary_key(conn, oid)
        if not pk:
            raise UsageError(
                f"table {name} has no primary key; the bridge names rows by it. "
                f"Add one (ALTER TABLE {name} ADD PRIMARY KEY (...)) and install again"
            )
        ident = sql.Identifier(schema)
        await conn.execute(sql.SQL(_CREATE).format(
            schema=ident, schema_text=sql.SQL(schema),
            lock_key=sql.Literal(lock_key(schema, "outbox")),
            notify=sql.Literal(notify_channel(schema)),
        ))
        await conn.execute(
            sql.SQL("INSERT INTO {}.meta (source, version) VALUES (%s, %s) "
                    "ON CONFLICT (singleton) DO NOTHING").format(ident),
            [secrets.token_hex(4), VERSION])
        await conn.execute(
            sql.SQL("INSERT INTO {}.sources (table_oid, table_name, template) "
                    "VALUES (%s, %s, %s) ON CONFLICT (table_oid) "
                    "DO UPDATE SET table_name = excluded.table_name, "
                    "template = excluded.template").format(ident),
            [oid, name, template])
        target = sql.Identifier(nsp, rel)
        trigger = sql.Identifier(trigger_name(schema))
        await conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger, target))
        arguments = sql.SQL(", ").join(sql.Literal(value) for value in [template, *pk])
        await conn.execute(sql.SQL(
            "CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {target} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {schema}.capture({args})"
        ).format(trigger=trigger, target=target, schema=ident, args=arguments))
    return Source(name, template)


async def uninstall(conn: AsyncConnection, table: str | None = None,
                    schema: str = DEFAULT_SCHEMA) -> int:
    """Stop capturing ``table`` (every table, and drop the schema, if ``None``).

    Returns how many changes were still waiting in the outbox: with a table
    they stay and the bridge still publishes them; without one they are dropped
    with the schema. Idempotent.
    """
    check_schema(schema)
    ident = sql.Identifier(schema)
    trigger = sql.Identifier(trigger_name(schema))
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(schema, "install")])
        if not await is_installed(conn, schema):
            if table is not None:
                await _resolve(conn, table)  # a clear error for a table that does not exist
            return 0
        pending = await pending_count(conn, schema)
        if table is not None:
            oid, nsp, rel = await _resolve(conn, table)
            await conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                trigger, sql.Identifier(nsp, rel)))
            await conn.execute(sql.SQL("DELETE FROM {}.sources WHERE table_oid = %s")
                               .format(ident), [oid])
            return pending
        # Dropping the function drops every trigger that calls it.
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ident))
        return pending


async def is_installed(conn: AsyncConnection, schema: str) -> bool:
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                [f'"{schema}".meta'])
    row = await cursor.fetchone()
    return bool(row and row[0])


async def outbox_source(conn: AsyncConnection, schema: str) -> str:
    """The ``source`` name of the outbox; :class:`UsageError` if nothing is installed."""
    if not await is_installed(conn, schema):
        option = "" if schema == DEFAULT_SCHEMA else f" --schema {shlex.quote(schema)}"
        raise UsageError(f"no tidings outbox in schema {schema!r} of this database; run "
                         f"`tidings bridge install DSN --table T --channel TEMPLATE{option}` "
                         "first")
    cursor = await conn.execute(sql.SQL("SELECT source FROM {}.meta").format(
        sql.Identifier(schema)))
    row = await cursor.fetchone()
    if row is None:
        raise UsageError(f"the tidings outbox in schema {schema!r} is incomplete; install again")
    return str(row[0])


async def check_sources(conn: AsyncConnection, schema: str) -> list[Source]:
    """The captured tables, each checked against the database as it is now.

    Raises :class:`UsageError` if a captured table was dropped, lost its
    primary key, or lacks a column its template names.
    """
    cursor = await conn.execute(sql.SQL(
        "SELECT s.table_oid, s.table_name, s.template, c.oid IS NOT NULL "
        "FROM {}.sources s LEFT JOIN pg_class c ON c.oid = s.table_oid "
        "ORDER BY s.table_name").format(sql.Identifier(schema)))
    sources = []
    for oid, name, template, exists in await cursor.fetchall():
        if not exists:
            raise UsageError(f"table {name} was dropped but is still listed for the bridge; "
                             f"run `tidings bridge uninstall DSN --table {name}`")
        ChannelTemplate.parse(template).check_columns(name, await table_columns(conn, oid))
        if not await primary_key(conn, oid):
            raise UsageError(f"table {name} has no primary key any more; the bridge names "
                             "rows by it. Add one and install again")
        sources.append(Source(name, template))
    return sources


async def pending_count(conn: AsyncConnection, schema: str) -> int:
    cursor = await conn.execute(sql.SQL("SELECT count(*) FROM {}.outbox").format(
        sql.Identifier(schema)))
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def table_columns(conn: AsyncConnection, oid: int) -> list[str]:
    cursor = await conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum", [oid])
    return [str(row[0]) for row in await cursor.fetchall()]


async def primary_key(conn: AsyncConnection, oid: int) -> list[str]:
    """The primary key's columns in key order; empty if the table has none."""
    cursor = await conn.execute(
        "SELECT a.attname FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)", [oid])
    return [str(row[0]) for row in await cursor.fetchall()]


async def _resolve(conn: AsyncConnection, table: str) -> tuple[int, str, str]:
    """``(oid, schema, name)`` of ``table`` (``name`` or ``schema.name``, SQL rules)."""
    cursor = await conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        [table])
    row = await cursor.fetchone()
    if row is None:
        raise UsageError(f"no table {table!r} in this database (check the name and the "
                         "search_path; write schema.table for another schema)")
    oid, nsp, rel, kind = row
    if kind not in ("r", "p"):
        raise UsageError(f"{table!r} is not a table (a view or another kind of relation)")
    return int(oid), str(nsp), str(rel)
