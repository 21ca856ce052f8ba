"""Prometheus metrics: ``GET /metrics``, collected from the server's own counters at scrape time.

Nothing here runs per delivery. The drivers keep plain integers where they
already are (a reader counts the messages and bytes it writes; ``Server.stats``
counts publishes, answers, refusals, gaps and slow consumers); a scrape walks
them and the open connections once and hands the figures to prometheus_client
(:class:`Collector`), which writes the text exposition format. Labels are
bounded: techniques, error codes, gap reasons, broker kind, bridge number;
never a channel name, a client address or an id.

``/metrics`` is served on the main port (with the API key when access control
is on) or, with ``metrics_listen = "HOST:PORT"``, only on that address and
open there (:class:`MetricsListener`): keep it on a private network.
docs/operations.md lists every metric.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

from tidings.core.log import Gap
from tidings.core.names import namespace_of
from tidings.errors import Forbidden, MethodNotAllowed, NotFound, ProtocolError
from tidings.settings import split_listen
from tidings.wire import http

if TYPE_CHECKING:
    from tidings.server.app import Server
    from tidings.server.connection import HttpConnection
    from tidings.server.request import Request
    from tidings.session.batch import Batch

logger = logging.getLogger("tidings.server")

#: The path of the metrics.
METRICS_PATH = "/metrics"
#: Upper bounds, in seconds, of the publish latency histogram's buckets (+Inf is implied).
PUBLISH_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                           1.0, 2.5, 5.0)
#: Bytes of one request to ``metrics_listen`` (a scrape is a short GET).
MAX_SCRAPE_REQUEST = 16 * 1024
#: Namespace of every metric.
NAMESPACE = "tidings"

# Keys of ``Server.stats`` that only metrics read; each is followed by a bounded label value.
DELIVERED = "delivered."  #: + technique: messages sent by closed streams and by answers
BYTES = "bytes."  #: + technique (http, sse, websocket): bytes written
BYTES_HTTP = BYTES + "http"
PUBLISHED = "published."  #: + how (http, websocket): publishes stored
SLOW = "slow_consumers."  #: + technique
GAPS = "gaps."  #: + reason
REFUSED = "refused."  #: + error code

STREAM_TECHNIQUES = ("sse", "websocket")
TECHNIQUES = ("websocket", "sse", "longpoll", "poll")


# counting (called by the drivers; each is a few additions) ---------------------------

#: The ``get_extra_info`` name of a transport that counts its bytes itself (the ASGI
#: mount's, server/asgi.py): :func:`acked_bytes` takes its count.
SENT_BYTES_INFO = "tidings_sent_bytes"
#: Where Linux's ``struct tcp_info`` holds ``tcpi_bytes_acked`` (since Linux 4.1).
_TCP_INFO_BYTES_ACKED = 120
_TCP_INFO_SIZE = 256


def acked_bytes(transport: Any) -> int:
    """Bytes of a TCP connection its peer has acknowledged, from the kernel (``TCP_INFO``).

    Streams' bytes are counted this way rather than per write, so that a
    delivery costs no addition for them. 0 where the kernel does not tell
    (not Linux, not TCP, a closed socket). A transport of the ASGI mount
    tells the bytes it handed to the ASGI server (:data:`SENT_BYTES_INFO`).
    """
    if transport is None:
        return 0
    counted = transport.get_extra_info(SENT_BYTES_INFO)
    if isinstance(counted, int):
        return counted
    option = getattr(socket, "TCP_INFO", None)
    sock = transport.get_extra_info("socket")
    if option is None or sock is None:
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_SIZE)
    except (OSError, ValueError):
        return 0
    if len(info) < _TCP_INFO_BYTES_ACKED + 8:
        return 0
    acked: int = struct.unpack_from("Q", info, _TCP_INFO_BYTES_ACKED)[0]
    return acked


def count_refusal(stats: Counter[str], error: ProtocolError | Any) -> None:
    """An error answer or reply with ``error``'s code (a bounded set: see errors.py)."""
    stats[REFUSED + str(getattr(error, "code", "error"))] += 1


def count_gap(stats: Counter[str], gap: Gap) -> None:
    stats[GAPS + gap.reason] += 1


def count_page(stats: Counter[str], technique: str, batch: Batch) -> None:
    """A poll or long-poll answer was sent with ``batch``'s messages and gaps."""
    stats[DELIVERED + technique] += len(batch.messages)
    for gap in batch.gaps:
        stats[GAPS + gap.reason] += 1


class LatencyHistogram:
    """Counts of observations by bucket, read at scrape time (no lock: one event loop)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = PUBLISH_LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(upper bound, count)`` pairs, as Prometheus wants them."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else repr(bound), running))
        return out


# collecting -------------------------------------------------------------------------


def delivered_totals(server: Server) -> dict[str, int]:
    """Messages delivered so far per technique: closed streams' and answers' counts, plus
    what the open streams' readers have sent."""
    stats = server.stats
    sent = {technique: stats[DELIVERED + technique] for technique in TECHNIQUES}
    for stream in server.registry.streams():
        sent[stream.technique] += stream.reader.sent
    return sent


class Collector:
    """Reads the server's counters and connections when Prometheus scrapes."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def describe(self) -> list[Metric]:
        return []  # collected on demand; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        server = self._server
        stats = server.stats
        streams = server.registry.streams()
        counts = server.registry.statistics()

        connections = GaugeMetricFamily(
            f"{NAMESPACE}_connections", "Open client connections: plain HTTP (polls, long "
            "polls, publishes, keep-alive) and streams by technique.", labels=["kind"])
        readers = GaugeMetricFamily(
            f"{NAMESPACE}_readers", "Open readers by technique: SSE streams, WebSocket "
            "subscriptions, parked long polls.", labels=["technique"])
        delivered = CounterMetricFamily(
            f"{NAMESPACE}_delivered_messages", "Messages sent to clients (live and from "
            "history), one per reader per message.", labels=["technique"])
        written = CounterMetricFamily(
            f"{NAMESPACE}_written_bytes", "Bytes sent: HTTP answers written (http), bytes of "
            "streams their clients acknowledged (sse, websocket; Linux TCP_INFO).",
            labels=["technique"])
        stream_count = dict.fromkeys(STREAM_TECHNIQUES, 0)
        subscriptions = dict.fromkeys(STREAM_TECHNIQUES, 0)
        sent = {technique: stats[DELIVERED + technique] for technique in TECHNIQUES}
        sent_bytes = {technique: stats[BYTES + technique]
                      for technique in ("http", *STREAM_TECHNIQUES)}
        for stream in streams:
            technique = stream.technique
            reader = stream.reader
            stream_count[technique] += 1
            subscriptions[technique] += len(reader.channels)
            sent[technique] += reader.sent
            if not stream.closed:
                sent_bytes[technique] += acked_bytes(stream.transport)
        connections.add_metric(["http"], counts["http"])
        for technique in STREAM_TECHNIQUES:
            connections.add_metric([technique], stream_count[technique])
        readers.add_metric(["sse"], stream_count["sse"])
        readers.add_metric(["websocket"], subscriptions["websocket"])
        readers.add_metric(["longpoll"], counts["long_polls"])
        for technique, value in sent.items():
            delivered.add_metric([technique], value)
        for technique, value in sent_bytes.items():
            written.add_metric([technique], value)
        yield from (connections, readers, delivered, written)

        buffered = GaugeMetricFamily(
            f"{NAMESPACE}_buffered_bytes", "Bytes written to streams that their clients have "
            "not read yet.")
        buffered.add_metric([], counts["buffered_bytes"])
        yield buffered

        published = CounterMetricFamily(
            f"{NAMESPACE}_published_messages", "Messages stored, by how they came: HTTP "
            "POST, a WebSocket publish command, or in this process (bridges, the demo).",
            labels=["via"])
        http_count, ws_count = stats[PUBLISHED + "http"], stats[PUBLISHED + "websocket"]
        published.add_metric(["http"], http_count)
        published.add_metric(["websocket"], ws_count)
        published.add_metric(["in_process"], max(stats["published"] - http_count - ws_count, 0))
        yield published

        yield _labelled(CounterMetricFamily(
            f"{NAMESPACE}_slow_consumers", "Streams cut off because their client did not read "
            "what it was sent.", labels=["technique"]), stats, SLOW, STREAM_TECHNIQUES)
        yield _labelled(CounterMetricFamily(
            f"{NAMESPACE}_gaps", "Gaps sent to clients (messages they asked for that the log "
            "no longer has, or a slow reader skipped), by reason.", labels=["reason"]),
            stats, GAPS, ("expired", "epoch", "skipped", "latest"))
        yield _labelled(CounterMetricFamily(
            f"{NAMESPACE}_refusals", "Error answers (HTTP) and error replies (WebSocket) by "
            "error code.", labels=["code"]), stats, REFUSED, ())

        hub_channels = GaugeMetricFamily(
            f"{NAMESPACE}_channels_with_readers", "Channels with at least one live reader.")
        hub_channels.add_metric([], server.broker.hub.channels())
        yield hub_channels

        health = server.broker.health()
        kind = str(health.get("kind", "unknown"))
        broker_up = GaugeMetricFamily(
            f"{NAMESPACE}_broker_up", "1 while the broker (the message store) is reachable, "
            "else 0.", labels=["kind"])
        broker_up.add_metric([kind], 1 if health.get("status", "ok") == "ok" else 0)
        yield broker_up
        channels = health.get("channels")
        if isinstance(channels, int):
            logs = GaugeMetricFamily(f"{NAMESPACE}_broker_channels",
                                     "Channel logs this node holds (memory) or replicates "
                                     "(Redis).", labels=["kind"])
            logs.add_metric([kind], channels)
            yield logs

        latency = server.publish_latency
        histogram = HistogramMetricFamily(
            f"{NAMESPACE}_publish_latency_seconds", "Seconds from a checked publish (HTTP or "
            "WebSocket) being handed to the broker to its message being stored.")
        histogram.add_metric([], latency.buckets(), latency.total)
        yield histogram

        yield from _bridges(server)
        yield from _hooks(server)
        yield from _presence(server)


def _labelled(family: CounterMetricFamily, stats: Counter[str], prefix: str,
              always: Sequence[str]) -> CounterMetricFamily:
    """``family`` with one sample per ``stats`` key under ``prefix`` (and 0 for ``always``)."""
    values = dict.fromkeys(always, 0)
    for key, value in stats.items():
        if key.startswith(prefix):
            values[key[len(prefix):]] = value
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def _bridges(server: Server) -> Iterator[Metric]:
    """The database bridges' state and progress (``[[bridges]]``), numbered from 0."""
    section = server.health_extra.get("bridges")
    if section is None:
        return
    entries = section()
    if not isinstance(entries, list):
        return
    state = GaugeMetricFamily(f"{NAMESPACE}_bridge_state", "1 for each bridge's current "
                              "state (running, standby, connecting, ...).",
                              labels=["bridge", "state"])
    published = CounterMetricFamily(f"{NAMESPACE}_bridge_published_changes",
                                    "Row changes a bridge published.", labels=["bridge"])
    failures = GaugeMetricFamily(f"{NAMESPACE}_bridge_failures", "Failures in a row of a "
                                 "bridge's connection (0 while it works).", labels=["bridge"])
    last = GaugeMetricFamily(f"{NAMESPACE}_bridge_last_seq", "The outbox sequence number of "
                             "the last change a bridge published.", labels=["bridge"])
    lag = GaugeMetricFamily(f"{NAMESPACE}_bridge_lag_seconds", "Seconds since the oldest "
                            "change waiting in a bridge's outbox was committed (0: none "
                            "waits), as of its last read.", labels=["bridge"])
    pending = GaugeMetricFamily(f"{NAMESPACE}_bridge_pending_changes", "Changes waiting in "
                                "a bridge's outbox at its last read (from sequence numbers: "
                                "rolled-back transactions may add a few).", labels=["bridge"])
    now = time.time()
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        label = str(number)
        state.add_metric([label, str(entry.get("state"))], 1)
        published.add_metric([label], _number(entry.get("published")))
        failures.add_metric([label], _number(entry.get("failures")))
        last.add_metric([label], _number(entry.get("last_seq")))
        since = entry.get("waiting_since")
        lag.add_metric([label], max(now - since, 0.0) if isinstance(since, float) else 0.0)
        pending.add_metric([label], _number(entry.get("pending")))
    yield from (state, published, failures, last, lag, pending)


def _hooks(server: Server) -> Iterator[Metric]:
    """The application's hooks (server/hooks.py): seconds per call, failures by reason."""
    hooks = server.hooks
    latency = HistogramMetricFamily(
        f"{NAMESPACE}_hook_latency_seconds", "Seconds an application hook took to allow, "
        "refuse or fail, by hook.", labels=["hook"])
    for name, histogram in sorted(hooks.latency.items()):  # the hooks called so far
        latency.add_metric([name], histogram.buckets(), histogram.total)
    failures = CounterMetricFamily(
        f"{NAMESPACE}_hook_failures", "Hook calls that failed (answered 503 "
        "hook_unavailable), by hook and reason: timeout, error (it raised), invalid_result.",
        labels=["hook", "reason"])
    for (name, reason), count in sorted(hooks.failures.items()):
        failures.add_metric([name, reason], count)
    yield from (latency, failures)


def _presence(server: Server) -> Iterator[Metric]:
    """Members and channels with members per namespace (configured ones; others: "")."""
    if not server.presence.enabled:
        return
    configured = server.settings.namespace_presence
    members: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    for channel, size in server.presence.table.sizes():
        namespace = namespace_of(channel)
        label = namespace if namespace in configured else ""  # bounded by the config
        members[label] += size
        channels[label] += 1
    member_family = GaugeMetricFamily(
        f"{NAMESPACE}_presence_members", "Present clients, summed over channels, by "
        "namespace (\"\": channels of no [namespaces.X] that sets presence).",
        labels=["namespace"])
    channel_family = GaugeMetricFamily(
        f"{NAMESPACE}_presence_channels", "Channels with at least one present client, by "
        "namespace.", labels=["namespace"])
    for label in sorted({"", *(n for n, p in configured.items() if p.enabled), *members}):
        member_family.add_metric([label], members[label])
        channel_family.add_metric([label], channels[label])
    yield from (member_family, channel_family)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def make_registry(server: Server) -> CollectorRegistry:
    """A registry of this server's metrics and its process's (CPU, memory, files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(server))
    ProcessCollector(namespace=NAMESPACE, registry=registry)
    return registry


def exposition(server: Server) -> bytes:
    """The text exposition of every metric now."""
    return generate_latest(server.metrics_registry)


# serving ----------------------------------------------------------------------------


def answer(server: Server, conn: HttpConnection, request: Request) -> None:
    """``GET /metrics`` on the main port: the API key when access control is on."""
    if server.settings.metrics_listen or not server.settings.metrics:
        raise NotFound(f"no such URL: {METRICS_PATH}" + (
            " (served on metrics_listen)" if server.settings.metrics_listen else ""))
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{request.method} is not allowed on {METRICS_PATH}",
                               allow=("GET", "HEAD"))
    auth = server.auth
    if auth.enabled and not auth.identify(request).api_key:
        raise Forbidden("the metrics need the API key (Authorization: Bearer), or serve them "
                        "on a private address with metrics_listen", code="api_key_required")
    head = request.method == "HEAD"
    if server.metrics_share is None:
        _answer_scrape(conn, request, exposition(server), head)
        return
    conn.park()  # the other workers' figures come first (server/workermetrics.py)
    server.spawn(_answer_workers(server, conn, request, head))


async def _answer_workers(server: Server, conn: HttpConnection, request: Request,
                          head: bool) -> None:
    assert server.metrics_share is not None
    try:
        body = await server.metrics_share.exposition(server)
    except Exception:  # a bug: this scrape fails, nothing else
        logger.exception("gathering the workers' metrics failed")
        conn.abort()
        return
    if not conn.closing and conn.transport is not None:
        _answer_scrape(conn, request, body, head)


def _answer_scrape(conn: HttpConnection, request: Request, body: bytes, head: bool) -> None:
    conn.answer(200, [("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")],
                b"" if head else body, request.keep_alive)


class MetricsListener(asyncio.Protocol):
    """One connection to ``metrics_listen``: answers ``GET /metrics``, then closes.

    A scrape is one short request; anything else gets ``404`` (or ``400`` for what
    does not parse) and the connection closes. It is closed after the server's
    ``header_timeout`` if the request does not come.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser: Any = httptools.HttpRequestParser(self)
        self._url = b""
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._timer = self._server.loop.call_later(self._server.settings.header_timeout,
                                                   transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self._size += len(data)
        if self._parser is None:
            return
        try:
            if self._size > MAX_SCRAPE_REQUEST:
                raise httptools.HttpParserError("request too large")
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"bad request\n")

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        method = self._parser.get_method() if self._parser is not None else b""
        path = self._url.partition(b"?")[0]
        if path != METRICS_PATH.encode() or method not in (b"GET", b"HEAD"):
            self._send(404, b"only GET /metrics here\n")
            return
        server = self._server
        if server.metrics_share is None:
            self._send(200, b"" if method == b"HEAD" else exposition(server),
                       CONTENT_TYPE_LATEST)
            return
        self._parser = None  # one request per connection; answered once the workers have
        server.spawn(self._send_workers(method == b"HEAD"))

    async def _send_workers(self, head: bool) -> None:
        server = self._server
        assert server.metrics_share is not None
        try:
            body = await server.metrics_share.exposition(server)
        except Exception:  # a bug: this scrape fails, nothing else
            logger.exception("gathering the workers' metrics failed")
            self._send(500, b"internal error\n")
            return
        self._send(200, b"" if head else body, CONTENT_TYPE_LATEST)

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self._parser = None  # one request per connection
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(http.response(status, [("Content-Type", content_type)], body,
                                            keep_alive=False))
        self._transport.close()


async def start_listener(server: Server) -> asyncio.Server | None:
    """Listen on ``metrics_listen`` if it is set (the caller closes the listener).

    Under ``--workers`` (:attr:`Server.metrics_share` set), also start answering the
    other workers, and every worker listens on ``metrics_listen`` (``SO_REUSEPORT``;
    the parent holds the address).
    """
    if not server.settings.metrics:
        return None
    share = server.metrics_share
    if share is not None:
        server.spawn(share.run(server), background=True)
    if not server.settings.metrics_listen:
        return None
    host, port = split_listen(server.settings.metrics_listen)
    return await server.loop.create_server(lambda: MetricsListener(server), host, port,
                                           reuse_address=True, reuse_port=share is not None)
