"""CORS: which browser origins may read and publish, and the headers that say so."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Headers = tuple[tuple[str, str], ...]

_EXPOSE = ("Access-Control-Expose-Headers", "ETag, Idempotent-Replayed, Tidings-Client")
_NONE: Headers = ()
_VARY: Headers = (("Vary", "Origin"),)


class Cors:
    """Answers CORS for poll, long poll, SSE and publish from a list of allowed origins.

    ``"*"`` in the list allows every origin. Answers are shared tuples, one
    per allowed origin, so that responses built from them can be cached.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)
        self.any = "*" in self.origins
        self._any_headers: Headers = (("Access-Control-Allow-Origin", "*"), _EXPOSE)
        self._per_origin: dict[str, Headers] = {
            origin: (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"), _EXPOSE)
            for origin in self.origins
        }

    def allows(self, origin: str) -> bool:
        return self.any or origin in self.origins

    def headers(self, request_headers: Mapping[str, str]) -> Headers:
        """The CORS headers for an actual (non-preflight) request."""
        origin = request_headers.get("origin")
        if origin is None:
            return _NONE
        if self.any:
            return self._any_headers
        return self._per_origin.get(origin, _VARY)

    def preflight(self, request_headers: Mapping[str, str], methods: str) -> Headers:
        """The headers of a ``204`` answer to an ``OPTIONS`` preflight."""
        origin = request_headers.get("origin")
        if origin is None or not self.allows(origin):
            return (("Allow", methods), ("Vary", "Origin"))
        return (
            ("Access-Control-Allow-Origin", "*" if self.any else origin),
            ("Access-Control-Allow-Methods", methods),
            ("Access-Control-Allow-Headers",
             request_headers.get("access-control-request-headers",
                                 "Content-Type, Last-Event-ID, Prefer, If-None-Match")),
            ("Access-Control-Max-Age", "600"),
            ("Vary", "Origin"),
            ("Allow", methods),
        )
