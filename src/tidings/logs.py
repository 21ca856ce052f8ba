"""Log lines for operators: plain text or one JSON object per line, secrets scrubbed.

The server logs through the standard :mod:`logging` machinery (loggers named
``tidings.*``); :func:`configure` installs one handler on stderr with the
chosen format. Fields beyond the message are passed as ``extra=`` and keep
these names (:data:`FIELDS`), so that a log pipeline can rely on them::

    logger.info("slow consumer cut off", extra={"client": "10.0.0.7", "technique": "sse",
                                                "code": "slow_consumer"})

In JSON (``--log-format json``) every line has ``time`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger`` and ``event`` (the message), then the
fields that apply, then ``error`` and ``traceback`` for an exception.

Whatever a line holds, credentials are removed before it is written
(:func:`scrub`): bearer tokens, JWTs, ``token=`` query parameters, the token
cookie, and the configured API key and HS256 secret themselves. The access log
(``access_log = true``) is the logger ``tidings.access``, off by default.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

#: The log formats ``--log-format`` and ``log_format`` accept.
LOG_FORMATS = ("text", "json")
#: The log levels ``--log-level`` and ``log_level`` accept.
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Fields a line may carry beyond the message, in the order they are written.
FIELDS = ("client", "technique", "channel", "user", "code", "method", "path", "status",
          "bytes", "duration_ms")
#: The logger of the access log (one line per request answered, or stream opened).
ACCESS_LOGGER = "tidings.access"
#: What replaces a credential in a log line.
REDACTED = "[redacted]"

_PATTERNS = (
    # Authorization: Bearer <anything>
    (re.compile(r"(?i)(bearer\s+)[^\s,;\"']+"), rf"\g<1>{REDACTED}"),
    # ?token=... / &token=... / tidings_token=... (a query or a cookie)
    (re.compile(r"(?i)((?:^|[?&;\s])(?:tidings_)?token=)[^&;\s\"']*"), rf"\g<1>{REDACTED}"),
    # a JWT anywhere: three base64url parts, the first a JSON object ("eyJ")
    (re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), REDACTED),
)


class Scrubber:
    """Removes credentials from text: the patterns above and the configured secrets."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


#: The scrubber :func:`configure` installs (the patterns only until then).
scrub = Scrubber()
#: The handler :func:`configure` installed, if any.
_handler: logging.Handler | None = None


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS
            if getattr(record, name, None) is not None}


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for its fields)."""

    def __init__(self, scrubber: Scrubber | None = None) -> None:
        super().__init__()
        self.scrubber = scrubber or scrub

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line["error"] = f"{type(error).__name__}: {error}"
            line["traceback"] = self.formatException(record.exc_info)
        text = json.dumps(line, ensure_ascii=False, default=str)
        return self.scrubber(text)


class TextFormatter(logging.Formatter):
    """``TIME LOGGER MESSAGE key=value ...``, as tidings has always logged, plus the fields."""

    def __init__(self, scrubber: Scrubber | None = None) -> None:
        super().__init__("%(asctime)s %(name)s %(message)s")
        self.scrubber = scrubber or scrub

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            extra = " ".join(f"{name}={value}" for name, value in fields.items())
            first, newline, rest = text.partition("\n")
            text = f"{first} {extra}{newline}{rest}"
        return self.scrubber(text)


def configure(level: str = "info", log_format: str = "text", *, access_log: bool = False,
              secrets: Iterable[str | None] = (), stream: TextIO | None = None) -> None:
    """Log ``tidings.*`` (and asyncio's, the root's) at ``level`` to ``stream`` (stderr).

    ``secrets`` (the API key, the HS256 secret) are scrubbed from every line
    besides the patterns; ``access_log`` turns the access log on. Replaces
    any handler a previous call installed.
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, "
                         f"not {log_format!r}")
    global scrub, _handler
    scrub = Scrubber(secrets)
    handler = _handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(scrub) if log_format == "json" else TextFormatter(scrub))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "tidings", False):
            root.removeHandler(old)
    handler.tidings = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    if access_log:
        turn_on_access_log()
    else:
        logging.getLogger(ACCESS_LOGGER).disabled = True


def turn_on_access_log() -> None:
    """Let the access log through (a server with ``access_log = true`` calls it as it
    starts, whatever an earlier :func:`configure` said): written at any level."""
    access = logging.getLogger(ACCESS_LOGGER)
    access.disabled = False
    access.setLevel(logging.INFO)


def notice(text: str, level: int = logging.INFO) -> None:
    """Tell the operator ``text`` whatever the log level ("shutting down", "cannot listen"):
    a line of the configured format, or ``tidings: TEXT`` on stderr without one."""
    if _handler is None or not isinstance(_handler.formatter, JsonFormatter):
        print(f"tidings: {text}", file=sys.stderr, flush=True)
        return
    record = logging.LogRecord("tidings", level, __file__, 0, text, None, None)
    _handler.handle(record)
