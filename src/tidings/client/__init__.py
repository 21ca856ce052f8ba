"""The Python client: subscribe and publish without knowing the wire.

::

    async with tidings.connect("http://127.0.0.1:8000") as client:
        async for item in client.subscribe("prices", "news"):
            match item:
                case tidings.Message(channel=channel, data=data):
                    print(channel, data)
                case tidings.Gap(channel=channel, missed=missed):
                    print(f"{channel}: lost {missed} messages")

Modules: ``_client`` (Client, Subscription, the reconnect loop), one module per
technique (``websocket``, ``sse``, ``longpoll``, ``poll``), ``publisher`` (the
publishers), and the I/O-free cores ``_cursors`` (resume rules),
``_sse`` (event-stream parser). Shared with the bridges: :mod:`tidings.backoff`
(retry delays) and :mod:`tidings.server_api` (server URLs, refusals).
docs/client.md is the guide.
"""

from tidings.backoff import Backoff
from tidings.client._client import AUTO_ORDER, TRANSPORTS, Client, Subscription, connect
from tidings.client.events import (
    BrokerStatus,
    Connected,
    Disconnected,
    Gap,
    Join,
    Leave,
    Member,
    Message,
    Presence,
    StatusEvent,
    Subscribed,
    TransportChanged,
    Unsubscribed,
)
from tidings.client.history import History
from tidings.client.publisher import AsyncPublisher, Publisher

__all__ = [
    "AUTO_ORDER",
    "TRANSPORTS",
    "AsyncPublisher",
    "Backoff",
    "BrokerStatus",
    "Client",
    "Connected",
    "Disconnected",
    "Gap",
    "History",
    "Join",
    "Leave",
    "Member",
    "Message",
    "Presence",
    "Publisher",
    "StatusEvent",
    "Subscribed",
    "Subscription",
    "TransportChanged",
    "Unsubscribed",
    "connect",
]
