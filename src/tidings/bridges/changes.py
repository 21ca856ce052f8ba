"""One committed row change, and the message it becomes.

The message data::

    {"op": "update", "table": "prices", "pk": {"symbol": "AAPL"},
     "row": {"symbol": "AAPL", "price": 187.2}, "seq": 1042,
     "source": "k2j4h5g6", "commit_ts": 1795809605197}

``row`` is the new row (the old one for a delete). A row too large for the
message size limit is left out: ``"row_omitted": true`` replaces ``row``, and
the subscriber reads the row itself by its ``pk`` if it needs it. ``seq``
numbers the changes of one outbox in commit order and ``source`` names that
outbox (see docs/bridge.md): together they let a restarted bridge recognise
what it already published.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidings.errors import TidingsError
from tidings.wire import jsonvalue


@dataclass(frozen=True, slots=True)
class Change:
    """A row of the outbox: what changed, and where it goes."""

    seq: int
    op: str
    table: str
    template: str
    pk_columns: tuple[str, ...]
    row: Mapping[str, Any]
    commit_ts: int  #: Unix time in milliseconds, taken while committing

    def data(self, source: str, *, omit_row: bool = False) -> bytes:
        """The message data, compact JSON; without the row if ``omit_row``."""
        value: dict[str, Any] = {
            "op": self.op,
            "table": self.table,
            "pk": {column: self.row.get(column) for column in self.pk_columns},
        }
        if omit_row:
            value["row_omitted"] = True
        else:
            value["row"] = self.row
        value.update(seq=self.seq, source=source, commit_ts=self.commit_ts)
        return jsonvalue.encode(value)

    def idempotency_key(self, source: str) -> str:
        """The key this change is published under: the same for every try, from any bridge.

        A retry whose first try was stored (its answer lost) is then answered
        with the first id instead of being stored twice, within the server's
        ``idempotency_window``.
        """
        digest = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
        return f"bridge-{digest}-{self.seq}"


def seq_from(data: bytes, source: str) -> int | None:
    """The ``seq`` of a published change of outbox ``source``, or ``None`` for other data."""
    try:
        value = jsonvalue.decode(data, "message")
    except TidingsError:
        return None
    if not isinstance(value, dict) or value.get("source") != source:
        return None
    seq = value.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
