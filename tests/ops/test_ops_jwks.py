"""Tokens of an identity provider: keys from a JWKS URL (rotation included), aud, iss, leeway.

The identity provider is a small HTTP server of this test on port 0, serving
a JSON Web Key Set it can change (a key rotation) and counting its fetches.
Clients are httpx and the ``websockets`` package.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from websockets.asyncio.client import connect

from conftest import UNIT, ServerFactory, until
from tidings import Server, UsageError
from tidings.settings import AuthSettings
from tidings.testing import ws_url

ISSUER = "https://idp.example/"
AUDIENCE = "tidings-api"


class IdentityProvider:
    """A JWKS endpoint whose keys can be rotated; signs tokens with any key it made."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False
        self._server: asyncio.Server | None = None

    def new_key(self, kid: str, kind: str = "RSA") -> None:
        """Make a key and publish it (alongside the others)."""
        if kind == "RSA":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "RS256"
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "ES256"
        jwk.update(kid=kid, use="sig")
        self.private[kid] = (key, jwk["alg"])
        self.published.append(jwk)

    def retire(self, kid: str) -> None:
        self.published = [k for k in self.published if k["kid"] != kid]

    def token(self, kid: str, *, aud: str = AUDIENCE, iss: str = ISSUER,
              exp: float | None = None, sub: str = "alice") -> str:
        key, algorithm = self.private[kid]
        claims = {"sub": sub, "aud": aud, "iss": iss,
                  "exp": int(exp if exp is not None else time.time() + 600),
                  "channels": {"subscribe": ["*"], "publish": ["*"]}}
        return jwt.encode(claims, key, algorithm, headers={"kid": kid})

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/.well-known/jwks"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.fetches += 1
        if self.down:
            body, status = b"down", b"503 Service Unavailable"
        else:
            body, status = json.dumps({"keys": self.published}).encode(), b"200 OK"
        writer.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.new_key("key-1")
    yield provider
    await provider.aclose()


async def start(make_server: ServerFactory, idp: IdentityProvider, **auth: Any) -> Server:
    url = await idp.start()
    settings = AuthSettings(jwks_url=url, jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                            default_subscribe="token", default_publish="token", **auth)
    server = await make_server(auth=settings)
    jwks = server.auth.jwks
    assert jwks is not None
    await until(lambda: jwks.loaded)
    return server


async def read(server: Server, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as http:
        return await http.get("/channels/c", headers={"Authorization": f"Bearer {token}"})


async def test_a_token_of_the_identity_provider_is_accepted(make_server: ServerFactory,
                                                           idp: IdentityProvider) -> None:
    server = await start(make_server, idp)
    assert (await read(server, idp.token("key-1"))).status_code == 200
    # The same through a WebSocket (token in the URL) and an SSE stream.
    async with connect(ws_url(server, f"/channels/c?token={idp.token('key-1')}")) as ws:
        assert json.loads(await ws.recv())["type"] == "subscribed"
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as http, \
            http.stream("GET", "/channels/c", params={"token": idp.token("key-1")},
                        headers={"Accept": "text/event-stream"}) as stream:
        assert stream.status_code == 200


@pytest.mark.parametrize(("changes", "code", "words"), [
    ({"aud": "another-api"}, "invalid_token", "audience"),
    ({"iss": "https://evil.example/"}, "invalid_token", "issuer"),
    ({"exp": time.time() - 120}, "token_expired", "expired"),
])
async def test_aud_iss_and_exp_are_checked(make_server: ServerFactory, idp: IdentityProvider,
                                           changes: dict[str, Any], code: str,
                                           words: str) -> None:
    server = await start(make_server, idp)
    response = await read(server, idp.token("key-1", **changes))
    assert response.status_code == 401
    assert response.json()["error"] == code
    assert words in response.json()["message"].lower()


async def test_leeway_allows_clock_skew(make_server: ServerFactory,
                                        idp: IdentityProvider) -> None:
    server = await start(make_server, idp, jwt_leeway=60.0)
    assert (await read(server, idp.token("key-1", exp=time.time() - 20))).status_code == 200
    late = await read(server, idp.token("key-1", exp=time.time() - 120))
    assert late.json()["error"] == "token_expired"


async def test_a_token_signed_by_a_key_not_in_the_set_is_refused(
        make_server: ServerFactory, idp: IdentityProvider) -> None:
    other = IdentityProvider()
    other.new_key("key-1")  # the same kid, another key: the signature does not verify
    server = await start(make_server, idp)
    response = await read(server, other.token("key-1"))
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")


async def test_key_rotation_is_followed_at_once(make_server: ServerFactory,
                                               idp: IdentityProvider) -> None:
    """The IdP publishes a new key and signs with it: the first token naming it makes the
    server fetch the set again (once), and it is accepted, over HTTP and WebSocket."""
    server = await start(make_server, idp, jwks_min_refresh_interval=0.5 * UNIT)
    assert idp.fetches == 1
    idp.new_key("key-2", "EC")
    idp.retire("key-1")
    await asyncio.sleep(0.5 * UNIT)  # past the smallest interval between fetches
    responses = await asyncio.gather(*(read(server, idp.token("key-2")) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert idp.fetches == 2  # five requests waited for one fetch
    # The retired key is gone after the fetch.
    assert (await read(server, idp.token("key-1"))).status_code == 401
    # A WebSocket whose auth command names a newer key still: held, fetched, acknowledged.
    idp.new_key("key-3")
    await asyncio.sleep(0.5 * UNIT)
    async with connect(ws_url(server, f"/channels/c?token={idp.token('key-2')}")) as ws:
        assert json.loads(await ws.recv())["type"] == "subscribed"
        await ws.send(json.dumps({"type": "auth", "token": idp.token("key-3"), "req": 1}))
        await ws.send(json.dumps({"type": "ping", "req": 2}))
        replies = [json.loads(await ws.recv()) for _ in range(2)]
        assert [(r["type"], r.get("req")) for r in replies] == [("ack", 1), ("ack", 2)]
    assert idp.fetches == 3


async def test_made_up_kids_cannot_make_it_hammer_the_provider(
        make_server: ServerFactory, idp: IdentityProvider) -> None:
    server = await start(make_server, idp, jwks_min_refresh_interval=60.0)
    key, _algorithm = idp.private["key-1"]
    forged = [jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "aud": AUDIENCE,
                          "iss": ISSUER}, key, "RS256", headers={"kid": f"made-up-{n}"})
              for n in range(30)]
    responses = await asyncio.gather(*(read(server, token) for token in forged))
    assert {r.status_code for r in responses} == {401}
    assert all("made-up" in r.json()["message"] for r in responses)
    assert idp.fetches == 1  # the start's fetch only: within the interval, none again
    assert (await read(server, idp.token("key-1"))).status_code == 200


async def test_healthz_says_starting_until_the_keys_are_fetched(
        make_server: ServerFactory, idp: IdentityProvider) -> None:
    idp.down = True
    url = await idp.start()
    server = await make_server(auth=AuthSettings(jwks_url=url))
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as http:
        await until(lambda: idp.fetches >= 1)
        health = await http.get("/healthz")
        assert (health.status_code, health.json()["status"]) == (503, "starting")
        assert "503" in health.json()["jwks"]["error"]
        idp.down = False
        await until(lambda: server.auth.jwks is not None and server.auth.jwks.loaded, 10 * UNIT)
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(("auth", "message"), [
    ({"jwks_url": "ftp://idp/jwks"}, "jwks_url must be an https://"),
    ({"jwt_leeway": -1.0}, "jwt_leeway must be from 0 to 3600"),
    ({"jwks_min_refresh_interval": 0.0}, "jwks_min_refresh_interval must be positive"),
])
def test_bad_identity_provider_settings(auth: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        AuthSettings(**auth)
