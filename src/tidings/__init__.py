"""tidings: a real-time channel server read by polling, long polling, SSE and WebSockets.

The public API; everything else lives in private-by-convention modules.
"""

from tidings.brokers import Broker, MemoryBroker
from tidings.client import (
    AsyncPublisher,
    Backoff,
    BrokerStatus,
    Client,
    Connected,
    Disconnected,
    Gap,
    History,
    Join,
    Leave,
    Member,
    Message,
    Presence,
    Publisher,
    Subscribed,
    Subscription,
    TransportChanged,
    Unsubscribed,
    connect,
)
from tidings.errors import (
    BadRequest,
    BrokerError,
    ClientClosed,
    ClientError,
    ConnectionFailed,
    MissedMessages,
    ProtocolError,
    RequestRefused,
    TidingsError,
    UsageError,
)
from tidings.server import Server
from tidings.server.hooks import ConnectRequest, HookUnavailable, Identity, Refuse, Replace
from tidings.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AsyncPublisher",
    "Backoff",
    "BadRequest",
    "Broker",
    "BrokerError",
    "BrokerStatus",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectRequest",
    "Connected",
    "ConnectionFailed",
    "Disconnected",
    "Gap",
    "History",
    "HookUnavailable",
    "Identity",
    "Join",
    "Leave",
    "Member",
    "MemoryBroker",
    "Message",
    "MissedMessages",
    "Presence",
    "ProtocolError",
    "Publisher",
    "Refuse",
    "Replace",
    "RequestRefused",
    "Server",
    "Settings",
    "Subscribed",
    "Subscription",
    "TidingsError",
    "TransportChanged",
    "Unsubscribed",
    "UsageError",
    "__version__",
    "connect",
]
