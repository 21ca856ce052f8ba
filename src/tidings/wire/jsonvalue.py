"""Published JSON values: validated once, re-encoded compactly.

Every value :func:`decode` returns, :func:`encode` can write back: numbers are
finite (``1e400`` would become infinity, which JSON cannot carry) and integers
have at most :data:`MAX_INT_DIGITS` digits. Both functions raise only
:class:`~tidings.errors.BadRequest` (``invalid_json``) for what they refuse.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from tidings.errors import BadRequest

#: The most digits an integer may have, in either direction. Python's default limit on
#: int <-> str conversion (``sys.get_int_max_str_digits()``); fixed here so that what is
#: accepted does not depend on how the interpreter was started, and so that parsing stays
#: linear in the body's size.
MAX_INT_DIGITS = 4300

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range (it would be infinite)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


_strict_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float,
                                   parse_int=_bounded_int)


def decode(body: bytes | str, what: str = "body") -> Any:
    """Parse strict JSON: no NaN or Infinity, no number out of range.

    Raises :class:`BadRequest` (``invalid_json``) for anything else; answer it
    to the peer that sent ``body``. ``what`` names it in the message.
    """
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
    """Compact UTF-8 JSON: no spaces, no raw newlines (safe for one SSE data line).

    Raises :class:`BadRequest` (``invalid_json``) for a value JSON cannot carry:
    NaN or an infinity, an integer too long to write, a lone surrogate, nesting
    too deep. A value that is not JSON at all (a set, an object) is the
    caller's bug and raises :class:`TypeError`.
    """
    try:
        return _encoder.encode(value).encode("utf-8")
    except RecursionError:
        raise BadRequest("value is nested too deeply", code="invalid_json") from None
    except UnicodeEncodeError:  # a lone surrogate, e.g. from the escape "\\ud800"
        raise BadRequest("value has a string that is not valid Unicode (lone surrogate)",
                         code="invalid_json") from None
    except (ValueError, OverflowError) as exc:  # NaN, an infinity, an int over the str limit
        raise BadRequest(f"value cannot be written as JSON: {str(exc)[:100]}",
                         code="invalid_json") from None


def compact(body: bytes) -> bytes:
    """Validate a published body and return its compact encoding.

    Raises :class:`BadRequest` (``invalid_json``); answer it to the publisher.
    """
    return encode(decode(body))
