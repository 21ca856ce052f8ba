"""Published JSON values: validated once, re-encoded compactly."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from tidings.errors import BadRequest

_decoder = json.JSONDecoder()
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_strict_decoder = json.JSONDecoder(parse_constant=_refuse_constant)


def decode(body: bytes | str, what: str = "body") -> Any:
    """Parse strict JSON (no NaN/Infinity); raise :class:`BadRequest` if invalid."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        return _strict_decoder.decode(text)
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not UTF-8", code="invalid_json") from None
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply", code="invalid_json") from None


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON: no spaces, no raw newlines (safe for one SSE data line)."""
    try:
        return _encoder.encode(value).encode("utf-8")
    except RecursionError:
        raise BadRequest("value is nested too deeply", code="invalid_json") from None
    except UnicodeEncodeError:  # a lone surrogate, e.g. from the escape "\\ud800"
        raise BadRequest("value has a string that is not valid Unicode (lone surrogate)",
                         code="invalid_json") from None


def compact(body: bytes) -> bytes:
    """Validate a published body and return its compact encoding."""
    return encode(decode(body))
