"""The PostgreSQL bridge: an outbox filled by triggers, published in commit order.

:mod:`.install` creates (and removes) the database side, :mod:`.bridge`
publishes it; :func:`attach` runs the ``[[bridges]]`` of a config file inside
a server. The design, and why it gives commit order: docs/bridge.md.
"""

from tidings.bridges.postgres.bridge import PostgresBridge
from tidings.bridges.postgres.install import (
    DEFAULT_SCHEMA,
    Source,
    check_sources,
    install,
    uninstall,
)
from tidings.bridges.postgres.serve import attach

__all__ = [
    "DEFAULT_SCHEMA",
    "PostgresBridge",
    "Source",
    "attach",
    "check_sources",
    "install",
    "uninstall",
]
