"""A parsed HTTP request, and the questions handlers ask of it."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_plus

from tidings.errors import BadRequest
from tidings.wire import delta

#: A number of seconds as a parameter: ASCII digits, a decimal point, no sign,
#: exponent or ``_`` (which ``float()`` would take), at most 9 digits before it.
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?", re.ASCII)


@dataclass(slots=True)
class Request:
    method: str
    target: bytes
    headers: dict[str, str]  #: lower-cased names; repeated fields joined with ", "
    body: bytes = b""
    keep_alive: bool = True
    upgrade: bool = False
    path: str = field(init=False)
    query: list[tuple[str, str]] = field(init=False)
    #: The last value of each query parameter (what :meth:`arg` answers, asked often).
    params: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        raw_path, _, raw_query = self.target.partition(b"?")
        try:
            path = raw_path.decode("ascii")
            self.path = unquote(path, errors="strict") if "%" in path else path
            self.query = _parse_query(raw_query.decode("ascii")) if raw_query else []
        except (UnicodeError, ValueError):
            raise BadRequest("request target is not valid percent-encoded ASCII") from None
        self.params = dict(self.query)

    def arg(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or ``None``."""
        return self.params.get(name)

    def args(self, name: str) -> list[str]:
        """Every value of query parameter ``name``, in order."""
        return [item for key, item in self.query if key == name]

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def wants_websocket(self) -> bool:
        return self.upgrade and "websocket" in self.headers.get("upgrade", "").lower()

    @property
    def wants_event_stream(self) -> bool:
        return "text/event-stream" in self.headers.get("accept", "")

    def latest(self) -> bool:
        """Whether ``?latest=1`` asks for the newest message of each channel only."""
        text = self.arg("latest")
        if text is None or text == "0":
            return False
        if text != "1":
            raise BadRequest(f"latest must be 1 or 0, not {text[:20]!r}", code="invalid_latest")
        return True

    def delta(self) -> bool:
        """Whether ``?delta=1`` asks for deltas (wire/delta.py); ``400 invalid_delta`` if not
        1 or 0."""
        return delta.wanted(self.arg("delta"))

    def wait_seconds(self) -> float | None:
        """The long-poll wait from ``?wait=`` or ``Prefer: wait=N``, or ``None``."""
        text = self.arg("wait")
        if text is None:
            prefer = self.headers.get("prefer")
            if prefer is not None:
                for preference in prefer.split(","):
                    name, _, value = preference.strip().partition("=")
                    if name.strip().lower() == "wait":
                        text = value.strip()
        if text is None:
            return None
        return _seconds(text)


@functools.lru_cache(maxsize=64)
def _seconds(text: str) -> float:
    """A ``wait`` value checked and converted; long pollers send the same few again and
    again, so each is checked once (a refusal is not cached: it raises)."""
    if _SECONDS.fullmatch(text) is None:
        raise BadRequest(f"wait must be a number of seconds such as 30 or 2.5, not "
                         f"{text[:20]!r}", code="invalid_wait")
    return float(text)


def _parse_query(query: str) -> list[tuple[str, str]]:
    """``a=1&b=2`` → pairs; decodes ``%XX`` and ``+`` only where present (the rare case)."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = unquote_plus(name, errors="strict")
            value = unquote_plus(value, errors="strict")
        pairs.append((name, value))
    return pairs
