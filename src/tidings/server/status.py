"""The live status page: ``/admin`` (the page) and ``/admin/status`` (what it shows).

``/admin`` is a static page (static/admin.html) that holds no data; it asks
for the API key and polls ``/admin/status`` with it, which answers when
access control is off or the key is right. :class:`StatusHistory` samples the
server's cumulative counters every :data:`SAMPLE_SECONDS` and keeps the last
:data:`SAMPLES`, from which the page draws publish and delivery rates over the
last minutes. Busiest channels are those with the most live readers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from tidings.errors import Forbidden, MethodNotAllowed
from tidings.server.metrics import TECHNIQUES, delivered_totals

if TYPE_CHECKING:
    from tidings.server.app import Server
    from tidings.server.connection import HttpConnection
    from tidings.server.request import Request

STATUS_PATH = "/admin/status"
#: Seconds between two samples of the counters.
SAMPLE_SECONDS = 5.0
#: Samples kept: six minutes at one every five seconds.
SAMPLES = 72
#: Channels listed as the busiest.
BUSIEST = 10


class StatusHistory:
    """The last :data:`SAMPLES` samples of the counters the page charts."""

    def __init__(self, server: Server, interval: float = SAMPLE_SECONDS) -> None:
        self._server = server
        #: Seconds between samples (read before each sleep).
        self.interval = interval
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES)

    def sample(self) -> None:
        server = self._server
        self.samples.append({"time": time.time(), "published": server.stats["published"],
                             "delivered": delivered_totals(server)})

    async def run(self) -> None:
        """Sample now, then every :attr:`interval` seconds, until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def rates(self) -> dict[str, Any]:
        """Per-second rates between consecutive samples: published, delivered by technique."""
        samples = list(self.samples)
        times, published = [], []
        delivered: dict[str, list[float]] = {technique: [] for technique in TECHNIQUES}
        for before, after in itertools.pairwise(samples):
            seconds = max(after["time"] - before["time"], 1e-6)
            times.append(round(after["time"], 3))
            published.append(round((after["published"] - before["published"]) / seconds, 2))
            for technique in TECHNIQUES:
                change = after["delivered"][technique] - before["delivered"][technique]
                delivered[technique].append(round(change / seconds, 2))
        return {"interval": self.interval, "times": times, "published": published,
                "delivered": delivered}


def status(server: Server) -> dict[str, Any]:
    """What ``/admin/status`` answers."""
    streams = server.registry.streams()
    counts = server.registry.statistics()
    connections = {"http": counts["http"], "sse": 0, "websocket": 0}
    for stream in streams:
        connections[stream.technique] += 1
    health = server.health()
    return {
        "time": int(time.time() * 1000),
        "status": health["status"],
        "connections": connections,
        "long_polls": counts["long_polls"],
        "rates": server.status_history.rates(),
        "busiest": [{"channel": channel, "readers": readers}
                    for channel, readers in server.broker.hub.busiest(BUSIEST)],
        "broker": health["broker"],
        "bridges": health.get("bridges", []),
        "published": server.stats["published"],
        "delivered": delivered_totals(server),
    }


def answer(server: Server, conn: HttpConnection, request: Request) -> None:
    """``GET /admin/status``: the API key when access control is on."""
    if request.method != "GET":
        raise MethodNotAllowed(f"{request.method} is not allowed on {STATUS_PATH}",
                               allow=("GET",))
    auth = server.auth
    if auth.enabled and not auth.identify(request).api_key:
        raise Forbidden("the status needs the API key (Authorization: Bearer)",
                        code="api_key_required")
    conn.answer_json(200, status(server), (("Cache-Control", "no-store"),),
                     request.keep_alive)
