"""Static files: the browser client at ``/tidings.js`` and any pages the embedder adds.

Files are read once when the server is built and kept as ready-made answers
(head and body), so serving one is a lookup and a write. Pages are matched by
exact URL path; there is no directory listing and no path from the URL ever
reaches the file system.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tidings.errors import UsageError
from tidings.wire import http

#: Where the package's own static files live.
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

#: The pages every server serves; pages given to :class:`StaticFiles` are merged over them.
BUILTIN_PAGES: Mapping[str, Path] = {
    "/tidings.js": STATIC_DIR / "tidings.js",
    # Every browser asks for it; without it, opening /healthz logs a 404 in the console.
    "/favicon.ico": STATIC_DIR / "favicon.ico",
    # The live status page; it holds no data and asks for the API key (server/status.py).
    "/admin": STATIC_DIR / "admin.html",
}

CONTENT_TYPES: Mapping[str, str] = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"

#: URL paths the protocol owns; a page there would never be reached.
RESERVED_PATHS = ("/subscribe", "/healthz")
RESERVED_PREFIX = "/channels/"

ALLOWED_METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    headers: tuple[tuple[str, str], ...]  #: without CORS and Content-Length
    etag: str


class StaticFiles:
    """URL path → file, read at construction.

    Raises :class:`UsageError` for a path that does not start with ``/``, that
    the protocol owns, or whose file cannot be read.
    """

    def __init__(self, pages: Mapping[str, Path] | None = None) -> None:
        merged = {**BUILTIN_PAGES, **(pages or {})}
        self.files: dict[str, StaticFile] = {
            path: _load(path, Path(file)) for path, file in merged.items()
        }

    def __contains__(self, path: str) -> bool:
        return path in self.files

    def answer(self, path: str, method: str, if_none_match: str | None, cors: http.Headers,
               keep_alive: bool) -> bytes:
        """The whole response to ``GET``/``HEAD`` of ``path`` (which must be served)."""
        page = self.files[path]
        if if_none_match is not None and _matches(if_none_match, page.etag):
            return http.response(304, [*page.headers, *cors], keep_alive=keep_alive)
        if method == "HEAD":
            headers = [*page.headers, *cors, ("Content-Length", str(len(page.body)))]
            return http.head(200, headers, keep_alive=keep_alive)
        return http.response(200, [*page.headers, *cors], page.body, keep_alive=keep_alive)


def _load(path: str, file: Path) -> StaticFile:
    if not path.startswith("/"):
        raise UsageError(f"page path {path!r} must start with /")
    if path in RESERVED_PATHS or path.startswith(RESERVED_PREFIX):
        raise UsageError(f"page path {path!r} is a URL of the protocol")
    try:
        body = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read page {path} from {file}: {exc}") from None
    etag = '"%s"' % hashlib.sha256(body).hexdigest()[:20]
    content_type = CONTENT_TYPES.get(file.suffix.lower(), DEFAULT_CONTENT_TYPE)
    headers = (
        ("Content-Type", content_type),
        ("Cache-Control", "no-cache"),
        ("ETag", etag),
        ("X-Content-Type-Options", "nosniff"),
    )
    return StaticFile(body, headers, etag)


def _matches(if_none_match: str, etag: str) -> bool:
    """``If-None-Match`` holds ``etag`` (weak or strong) or ``*``."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


__all__ = ["BUILTIN_PAGES", "STATIC_DIR", "StaticFile", "StaticFiles"]
