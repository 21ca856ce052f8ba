"""Keys from an identity provider's JWKS URL (``[auth] jwks_url``), cached and refreshed.

Auth0, Keycloak, Cognito and the like sign tokens with keys they publish as a
JSON Web Key Set and rotate now and then, publishing a new key (a new
``kid``) before they sign with it. :class:`JwksKeys` holds the set:

* fetched when the server starts (``/healthz`` says ``starting`` until the
  first fetch succeeds) and every ``jwks_refresh_interval`` seconds;
* fetched again when a token names a ``kid`` it does not hold, at most once
  per ``jwks_min_refresh_interval`` seconds whatever the tokens say, so that
  tokens with made-up ``kid`` values cannot make the server hammer the
  provider. A ``kid`` still unknown after a fetch is refused until the next.

Fetching is asynchronous (httpx): the request whose token needs a fetch waits
for it (``KeysMissing``, handled by the router), nothing else does. The keys
are parsed by PyJWT (``PyJWKSet``); only asymmetric keys are taken.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import jwt

from tidings.backoff import Backoff
from tidings.settings import AuthSettings

logger = logging.getLogger("tidings.server")

#: Seconds a fetch of the key set may take.
JWKS_TIMEOUT = 10.0
#: The largest key set accepted, in bytes.
MAX_JWKS_SIZE = 1 << 20
#: Unknown ``kid`` values remembered between fetches (tokens may name any).
MAX_UNKNOWN_KIDS = 1024
#: Algorithms a JWKS key may verify (asymmetric only: an ``oct`` key is a shared secret).
JWKS_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                             "ES256", "ES384", "ES512", "EdDSA"})


class KeysMissing(Exception):
    """A token names a ``kid`` the key set may gain by a fetch: await
    :meth:`JwksKeys.fetch_for` (``kid``), then verify the token again."""

    def __init__(self, kid: str) -> None:
        super().__init__(kid)
        self.kid = kid


class JwksKeys:
    """The key set of one JWKS URL; see the module docstring."""

    def __init__(self, settings: AuthSettings) -> None:
        assert settings.jwks_url is not None
        self.url = settings.jwks_url
        self.refresh_interval = settings.jwks_refresh_interval
        self.min_interval = settings.jwks_min_refresh_interval
        self.allowed = frozenset(settings.jwt_algorithms) or JWKS_ALGORITHMS
        #: kid -> the key and the algorithm it verifies.
        self.keys: dict[str, tuple[Any, str]] = {}
        self.loaded = False
        #: How many fetches were made (for tests and health).
        self.fetches = 0
        self.error: str | None = None
        self._last_fetch = -float("inf")
        self._fetching: asyncio.Task[None] | None = None
        #: kids not in the set after the last fetch: refused without a new fetch until then.
        self._unknown: set[str] = set()

    # what verification asks ---------------------------------------------------------

    def key(self, kid: str) -> tuple[Any, str] | None:
        """The key and algorithm of ``kid``; raise :class:`KeysMissing` if a fetch may find
        it; ``None`` if it is unknown and no fetch is allowed yet."""
        found = self.keys.get(kid)
        if found is not None:
            return found
        if kid in self._unknown and not self._may_fetch():
            return None
        raise KeysMissing(kid)

    async def fetch_for(self, kid: str) -> None:
        """Fetch the set if the rate allows (else wait for a fetch under way); afterwards
        ``kid`` is either held or refused until the next allowed fetch."""
        if self._fetching is not None:
            await asyncio.shield(self._fetching)
        elif self._may_fetch():
            await self.refresh()
        if kid not in self.keys:
            if len(self._unknown) >= MAX_UNKNOWN_KIDS:
                self._unknown.clear()  # forgetting only costs a wait on the rate, no fetch
            self._unknown.add(kid)

    def _may_fetch(self) -> bool:
        loop = asyncio.get_running_loop()
        return loop.time() - self._last_fetch >= self.min_interval

    # fetching --------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch the set now (one fetch at a time: a second caller waits for the first)."""
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
        task = self._fetching
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._fetching is task:
                self._fetching = None

    async def _fetch(self) -> None:
        self._last_fetch = asyncio.get_running_loop().time()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=JWKS_TIMEOUT, follow_redirects=True) as http:
                response = await http.get(self.url, headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise ValueError(f"answered {response.status_code}")
            if len(response.content) > MAX_JWKS_SIZE:
                raise ValueError(f"key set larger than {MAX_JWKS_SIZE} bytes")
            keys = self._parse(response.json())
        except Exception as exc:  # whatever the provider sends, the keys held are kept
            self.error = f"fetching {self.url} failed: {type(exc).__name__}: {exc}"
            logger.warning("JWKS: %s; keeping the %d key(s) held", self.error, len(self.keys))
            return
        self.keys = keys
        self._unknown.clear()
        self.loaded = True
        self.error = None
        logger.info("JWKS: %d key(s) from %s", len(keys), self.url)

    def _parse(self, document: Any) -> dict[str, tuple[Any, str]]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWK set: {\"keys\": [...]}")
        keys: dict[str, tuple[Any, str]] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str) or entry.get("kty") == "oct":
                continue
            try:
                jwk = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                logger.warning("JWKS: skipping key %r: %s", kid[:40], exc)
                continue
            algorithm = jwk.algorithm_name
            if algorithm in self.allowed:
                keys[kid] = (jwk.key, algorithm)
        return keys

    async def run(self) -> None:
        """Fetch at start (retrying with backoff until it works), then every
        ``refresh_interval`` seconds; until cancelled."""
        backoff = Backoff(initial=0.5, maximum=30.0)
        attempt = 0
        while not self.loaded:
            await self.refresh()
            if not self.loaded:
                await asyncio.sleep(backoff.delay(attempt))
                attempt += 1
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh()

    def health(self) -> dict[str, object]:
        return {"url": self.url, "keys": sorted(self.keys), "loaded": self.loaded,
                "fetches": self.fetches, "error": self.error}
