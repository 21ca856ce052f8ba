"""tidings: a real-time channel server read by polling, long polling, SSE and WebSockets.

The public API; everything else lives in private-by-convention modules.
"""

from tidings.brokers import Broker, MemoryBroker
from tidings.errors import (
    BadRequest,
    BrokerError,
    ProtocolError,
    TidingsError,
    UsageError,
)
from tidings.server import Server
from tidings.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "Broker",
    "BrokerError",
    "MemoryBroker",
    "ProtocolError",
    "Server",
    "Settings",
    "TidingsError",
    "UsageError",
    "__version__",
]
