"""Shared by the auth tests: keys, tokens, and servers with access control on.

The test server's rules (docs/security.md):

=============  ==========  ==========
namespace      subscribe   publish
=============  ==========  ==========
``public``     anyone      api_key
``chat``       token       token
``open``       anyone      anyone
(other)        token       api_key     the safe default
=============  ==========  ==========

HTTP and WebSocket helpers are the public kit's (:mod:`tidings.testing`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

import httpx
import jwt

from tidings.core.policy import Rule
from tidings.settings import AuthSettings
from tidings.testing import publish

SECRET = "test-secret-of-at-least-32-bytes-length"
API_KEY = "the-server-api-key"

RULES = {
    "public": Rule("anyone", "api_key"),
    "chat": Rule("token", "token"),
    "open": Rule("anyone", "anyone"),
}
AUTH = AuthSettings(api_key=API_KEY, jwt_hs256_secret=SECRET, rules=RULES)


def token(subscribe: Sequence[str] = (), publish: Sequence[str] = (), ttl: float = 60.0,
          key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    """A JWT for ``sub="alice"`` granting ``subscribe`` and ``publish``, valid ``ttl`` seconds."""
    payload: dict[str, Any] = {
        "sub": "alice",
        "exp": time.time() + ttl,
        "channels": {"subscribe": list(subscribe), "publish": list(publish)},
        **claims,
    }
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm)


def signed(payload_text: str, header_text: str = '{"alg":"HS256","typ":"JWT"}',
           key: str = SECRET) -> str:
    """An HS256 JWT over ``payload_text`` as given: JSON that ``jwt.encode`` cannot write
    (``1e400``, integers of thousands of digits, ``NaN``)."""
    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()
    signing_input = f"{part(header_text.encode())}.{part(payload_text.encode())}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def publish_ok(client: httpx.AsyncClient, channel: str, value: Any) -> str:
    """Publish with the API key; return the new id."""
    return await publish(client, channel, value, headers=bearer(API_KEY))


def refusal(response: httpx.Response) -> tuple[int, str]:
    """``(status, error code)`` of a JSON error answer."""
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    return response.status_code, body["error"]
