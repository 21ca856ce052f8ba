"""Bridges: publish what changes in a database, each committed change exactly once.

The PostgreSQL bridge (docs/bridge.md) lives in :mod:`tidings.bridges.postgres`
and needs ``psycopg`` (the ``postgres`` extra: ``pip install -e '.[postgres]'`` in a
checkout); this package's own modules do not.
"""

from tidings.bridges.changes import Change
from tidings.bridges.sinks import BrokerSink, HttpSink, Sink, SinkUnavailable
from tidings.bridges.template import ChannelTemplate, RenderError

__all__ = [
    "BrokerSink",
    "Change",
    "ChannelTemplate",
    "HttpSink",
    "RenderError",
    "Sink",
    "SinkUnavailable",
]
