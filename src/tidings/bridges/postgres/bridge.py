"""The bridge: outbox rows in commit order → published messages, each exactly once.

One task runs :meth:`PostgresBridge.run`. Each connection to the database
goes through the same steps:

1. install the configured tables (idempotent), check every captured table
   against its template, take the bridge lock (one bridge per outbox; a
   second one waits as a standby), ``LISTEN``;
2. read the outbox ``ORDER BY seq`` (commit order, see :mod:`.install`) a
   batch at a time, publish each change, then delete the batch: a change is
   done only once its publish was accepted;
3. with the outbox empty, wait for a ``NOTIFY`` (or ``poll_interval``).

**Exactly once.** Each change is published under an idempotency key made of
its outbox and ``seq`` (:meth:`Change.idempotency_key`), so a publish whose
outcome is unknown (a timeout, a ``503``, a lost connection) is simply tried
again with the same key: the server stores it once and answers a replay if
the first try was stored. A key is remembered for the server's
``idempotency_window`` only, so what may lie further back is still read
back from the channel: the first batch after every (re)connect (a crash
after a publish was accepted but before its row was deleted leaves the row
to be read again, maybe hours later), and a retry whose first try is older
than :data:`KEYED_RETRY_SECONDS`. Each message carries ``seq`` and
``source``, the bridge publishes a channel's changes in ``seq`` order, so
every change at or below the highest ``seq`` the channel retains from this
outbox was already published and is skipped.

Losing the database is not an error: the bridge says so in the log and in
:meth:`health`, and retries with backoff. A configuration error (a table
without a primary key, a template naming a missing column, nothing
installed) ends :meth:`run` with :class:`~tidings.errors.UsageError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict

from tidings.backoff import Backoff
from tidings.bridges.changes import Change
from tidings.bridges.postgres.install import (
    DEFAULT_SCHEMA,
    check_schema,
    check_sources,
    install,
    lock_key,
    notify_channel,
    outbox_source,
)
from tidings.bridges.sinks import Sink, SinkUnavailable
from tidings.bridges.template import ChannelTemplate, RenderError
from tidings.errors import PayloadTooLarge, RequestRefused, UsageError

logger = logging.getLogger("tidings.bridge")

#: Outbox rows read, published and marked done together.
BATCH_SIZE = 100
#: Seconds between outbox reads when no ``NOTIFY`` comes (a safety net, not the trigger).
POLL_INTERVAL = 5.0
#: How the bridge's connection shows in ``pg_stat_activity``.
APPLICATION_NAME = "tidings bridge"
#: Seconds to wait for the database to answer a connection attempt.
CONNECT_TIMEOUT = 10
#: How long after its first try a publish is retried on its idempotency key alone; past
#: that (the server's idempotency_window, 300 s by default, may have forgotten the key),
#: the channel is read back first.
KEYED_RETRY_SECONDS = 60.0


class PostgresBridge:
    """Publish the changes of one PostgreSQL outbox through ``sink``.

    ``tables`` are ``(table, channel template)`` pairs installed (idempotently)
    on every connection; tables installed before with ``tidings bridge install``
    are published too. Run it with ``await bridge.run()`` (it ends only by
    cancellation or with :class:`UsageError`); :meth:`health` says how it goes.
    """

    def __init__(self, dsn: str, sink: Sink, *, schema: str = DEFAULT_SCHEMA,
                 tables: Sequence[tuple[str, str]] = (), backoff: Backoff | None = None,
                 batch_size: int = BATCH_SIZE, poll_interval: float = POLL_INTERVAL) -> None:
        self.dsn = dsn
        self.sink = sink
        self.schema = check_schema(schema)
        self.tables = tuple(tables)
        for _table, template in self.tables:
            ChannelTemplate.parse(template)
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        #: ``starting`` until the capture is installed (its tables' triggers and the
        #: outbox checked), whatever the attempts meanwhile; then ``connecting``,
        #: ``running``, ``reconnecting``, ``standby``, ``publish_failing`` or ``failed``.
        self.state = "starting"
        self.error: str | None = None
        #: Set once the capture is installed: changes committed from then on are published.
        self.installed = asyncio.Event()
        #: Connection attempts that failed since the last success.
        self.failures = 0
        self.published = 0
        #: Changes found already published after a restart, and not published again.
        self.recovered = 0
        #: Changes that could not be published (no valid channel, refused): logged, then done.
        self.skipped = 0
        self.last_seq = 0
        #: Commit time (Unix seconds) of the oldest change the bridge knows is waiting,
        #: as of its last read of the outbox; ``None`` when that read found it empty.
        self.pending_since: float | None = None
        #: The highest ``seq`` in the outbox at the last read (``pending`` in :meth:`health`).
        self.newest_seq = 0
        self.source = ""
        self._templates: dict[str, ChannelTemplate] = {}
        self._verifying = True
        #: While verifying: the highest ``seq`` each channel retains from this outbox.
        self._published_through: dict[str, int] = {}
        #: Set while connected and publishing.
        self.running = asyncio.Event()
        #: Set at every change of :attr:`state` (and failure); clear it to wait for the next.
        self.changed = asyncio.Event()

    @property
    def where(self) -> str:
        """The database, for logs and health: ``host:port/dbname`` (no password)."""
        try:
            info = conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError:
            return "(invalid DSN)"
        host = info.get("host") or "localhost"
        port = info.get("port") or "5432"
        return f"{host}:{port}/{info.get('dbname') or info.get('user') or ''}"

    def health(self) -> dict[str, object]:
        return {
            "database": self.where,
            "schema": self.schema,
            "state": self.state,
            "error": self.error,
            "failures": self.failures,
            "published": self.published,
            "recovered": self.recovered,
            "skipped": self.skipped,
            "last_seq": self.last_seq,
            "waiting_since": self.pending_since,
            "pending": max(self.newest_seq - self.last_seq, 0),
        }

    def lag(self, now: float | None = None) -> float:
        """Seconds since the oldest change still waiting was committed (0: none waits).

        As of the last read of the outbox: it grows while the bridge cannot publish
        (a refusing server, a lost database) with changes waiting. Changes committed
        while the database is unreachable are not seen until the bridge reconnects.
        """
        if self.pending_since is None:
            return 0.0
        return max((time.time() if now is None else now) - self.pending_since, 0.0)

    # the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; forever, until cancelled.

        Raises :class:`UsageError` (after logging it and setting ``state`` to
        ``"failed"``) for a configuration error.
        """
        while True:
            try:
                await self._session()
            except UsageError as exc:
                self._set("failed", str(exc))
                logger.error("bridge %s stopped: %s", self.where, exc)
                raise
            except (psycopg.Error, OSError) as exc:
                reason = f"database: {str(exc).strip() or type(exc).__name__}"
            except Exception as exc:  # a bug: start over rather than stop publishing
                reason = f"unexpected error: {exc!r}"
                logger.exception("bridge %s: unexpected error; starting over", self.where)
            self.running.clear()
            self.failures += 1
            delay = self.backoff.delay(self.failures - 1)
            self._set("reconnecting" if self.installed.is_set() else "starting", reason)
            logger.warning("bridge %s: %s; retrying in %.1f s", self.where, reason, delay)
            await asyncio.sleep(delay)

    def _set(self, state: str, error: str | None = None) -> None:
        self.state = state
        self.error = error
        self.changed.set()

    async def _session(self) -> None:
        self._set("connecting" if self.installed.is_set() else "starting", self.error)
        conn = await AsyncConnection.connect(self.dsn, autocommit=True,
                                             connect_timeout=CONNECT_TIMEOUT,
                                             application_name=APPLICATION_NAME)
        async with conn:
            for table, template in self.tables:
                await install(conn, table, template, self.schema)
            self.source = await outbox_source(conn, self.schema)
            await check_sources(conn, self.schema)
            # From here every change is in the outbox, published now or by whoever holds the lock.
            self.installed.set()
            await self._lock(conn)
            await conn.execute(sql.SQL("LISTEN {}").format(
                sql.Identifier(notify_channel(self.schema))))
            self.failures = 0
            self._set("running")
            self.running.set()
            logger.info("bridge %s: publishing changes from schema %s", self.where, self.schema)
            self._verifying = True
            self._published_through.clear()
            while True:
                changes = await self._fetch(conn)
                if changes:
                    await self._deliver(conn, changes)
                    if len(changes) == self.batch_size:
                        continue
                async for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                    pass

    async def _lock(self, conn: AsyncConnection) -> None:
        """Take the bridge lock of the outbox, waiting while another bridge holds it."""
        key = lock_key(self.schema, "bridge")
        while True:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", [key])
            row = await cursor.fetchone()
            if row and row[0]:
                return
            self._set("standby", "another bridge publishes this outbox; waiting for its lock")
            await asyncio.sleep(self.poll_interval)

    async def _fetch(self, conn: AsyncConnection) -> list[Change]:
        outbox = sql.Identifier(self.schema)
        cursor = await conn.execute(sql.SQL(
            "SELECT seq, op, table_name, template, pk_columns, row, "
            "(extract(epoch FROM commit_ts) * 1000)::bigint, "
            "(SELECT max(seq) FROM {}.outbox) "  # the primary key's index: no scan
            "FROM {}.outbox ORDER BY seq LIMIT %s").format(outbox, outbox), [self.batch_size])
        rows = await cursor.fetchall()
        changes = [Change(seq, op, table, template, tuple(pk), row, commit_ts)
                   for seq, op, table, template, pk, row, commit_ts, _newest in rows]
        if changes:
            self.pending_since = changes[0].commit_ts / 1000
            self.newest_seq = rows[0][-1]
        else:
            self.pending_since = None
            self.newest_seq = self.last_seq
        return changes

    async def _done(self, conn: AsyncConnection, seq: int) -> None:
        await conn.execute(sql.SQL("DELETE FROM {}.outbox WHERE seq <= %s").format(
            sql.Identifier(self.schema)), [seq])
        self.last_seq = seq

    # publishing ----------------------------------------------------------------

    async def _deliver(self, conn: AsyncConnection, changes: list[Change]) -> None:
        """Publish ``changes`` in order, then mark them done.

        While :attr:`_verifying` (from connecting until the first change that
        was not published yet), a change that its channel already retains is
        skipped: it was published before a crash. Changes are published in
        ``seq`` order, so after the first one that was not, none was.
        """
        for change in changes:
            self.pending_since = change.commit_ts / 1000  # the oldest one waiting now
            channel = self._channel(change)
            if channel is None:
                continue
            if self._verifying:
                if channel not in self._published_through:
                    self._published_through[channel] = await self._last_seq(channel)
                if change.seq <= self._published_through[channel]:
                    self.recovered += 1
                    continue
                self._verifying = False
                self._published_through.clear()
            await self._publish(channel, change)
        await self._done(conn, changes[-1].seq)
        if len(changes) < self.batch_size:
            self.pending_since = None  # that read found no more

    def _channel(self, change: Change) -> str | None:
        template = self._templates.get(change.template)
        try:
            if template is None:
                template = self._templates[change.template] = ChannelTemplate.parse(
                    change.template)
            return template.render(change.row)
        except (RenderError, UsageError) as exc:
            self.skipped += 1
            logger.error("bridge %s: change %d of %s skipped: %s", self.where, change.seq,
                         change.table, exc)
            return None

    async def _publish(self, channel: str, change: Change) -> None:
        """Publish one change; retry while the server is unavailable."""
        data = change.data(self.source)
        limit = self.sink.max_message_size
        if limit is not None and len(data) > limit:
            data = change.data(self.source, omit_row=True)
        key = change.idempotency_key(self.source)
        first_try = time.monotonic()
        attempt = 0
        while True:
            try:
                try:
                    stored = await self.sink.publish(channel, data, idempotency_key=key)
                except PayloadTooLarge:
                    data = change.data(self.source, omit_row=True)
                    stored = await self.sink.publish(channel, data, idempotency_key=key)
            except SinkUnavailable as exc:
                self._set("publish_failing", str(exc))
                delay = self.backoff.delay(attempt)
                attempt += 1
                logger.warning("bridge %s: %s; retrying in %.1f s", self.where, exc, delay)
                await asyncio.sleep(delay)
                # The failed publish may have been accepted. Within the key's
                # window the retry's key tells; past it, look first.
                if (time.monotonic() - first_try > KEYED_RETRY_SECONDS
                        and await self._last_seq(channel) >= change.seq):
                    self.recovered += 1
                    break
                continue
            except (RequestRefused, PayloadTooLarge) as exc:
                self.skipped += 1
                logger.error("bridge %s: change %d refused on %s: %s", self.where,
                             change.seq, channel, exc)
                break
            if stored:
                self.published += 1
            else:
                self.recovered += 1
            break
        if self.state != "running":
            self._set("running")

    async def _last_seq(self, channel: str) -> int:
        """The channel's highest published ``seq``; waits while the server is unavailable."""
        attempt = 0
        while True:
            try:
                return await self.sink.last_seq(channel, self.source)
            except SinkUnavailable as exc:
                self._set("publish_failing", str(exc))
                delay = self.backoff.delay(attempt)
                attempt += 1
                await asyncio.sleep(delay)
            except RequestRefused as exc:
                logger.warning("bridge %s: cannot read %s back (%s); publishing anyway",
                               self.where, channel, exc)
                return 0
