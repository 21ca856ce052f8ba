"""Credentials: the server's API key and JWT connection tokens (docs/security.md).

:class:`Authenticator` finds the credentials of a request — ``Authorization:
Bearer``, then ``?token=``, then the ``tidings_token`` cookie — and verifies
them; :mod:`tidings.core.policy` decides what they allow. Each algorithm is
pinned to its own key: HS256 tokens are checked only with the HS256 secret,
RS*/ES* tokens only with the public key, so neither ``alg: none`` nor an HS256
token "signed" with the public key can pass.

Whatever a token holds, verifying it either returns credentials or raises
:class:`Unauthorized`; malformed claims (``exp`` of ``10**400``, a ``sub`` that
is a list, text that is not ASCII) are ``invalid_token`` like a bad signature.

A browser sends the cookie with requests that other sites' pages make, so a
request the cookie authenticates is refused (``403 origin_not_allowed``) when
its ``Origin`` is not allowed (cross-site request forgery); the header and
``?token=`` cannot be set from a visitor's ambient credentials and are not
checked.
"""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tidings.core.names import check_channel
from tidings.core.policy import Claims, Policy, Refusal
from tidings.errors import (
    BadRequest,
    Forbidden,
    InvalidChannel,
    ProtocolError,
    Unauthorized,
    UsageError,
)
from tidings.server.jwks import JwksKeys
from tidings.server.request import Request
from tidings.settings import AuthSettings
from tidings.wire import jsonvalue

#: The cookie a browser may carry its token in.
TOKEN_COOKIE = "tidings_token"
#: Algorithms accepted for each kind of public key; the config may narrow them.
PUBLIC_KEY_ALGORITHMS = {"RSA": ("RS256", "RS384", "RS512"), "EC": ("ES256", "ES384", "ES512")}
_DEFAULT_ALGORITHM = {"RSA": "RS256", "EC": "ES256"}
#: The longest token accepted, in characters (a bound on work done for garbage).
MAX_TOKEN_LENGTH = 8192
#: What PyJWT may raise, besides its own errors, for a token whose JSON is well-formed but
#: whose values are not (a number no float holds, a string where a number belongs): such a
#: token is refused as ``invalid_token``. Caught only around decoding, not around our code.
_MALFORMED_TOKEN_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who a caller is: a token's claims (or ``None``) and whether it gave the API key."""

    claims: Claims | None = None
    api_key: bool = False

    @property
    def rate_key(self) -> str | None:
        """Whose publish-rate bucket this caller uses: the API key's, the token subject's,
        or ``None`` for the client address's."""
        if self.api_key:
            return "api-key"
        if self.claims is not None and self.claims.sub is not None:
            return f"token:{self.claims.sub}"
        return None

    @property
    def expires(self) -> float:
        """The token's ``exp`` in Unix seconds, or 0 (never: no token, or the API key)."""
        if self.api_key or self.claims is None or self.claims.expires is None:
            return 0.0
        return self.claims.expires


ANONYMOUS = Credentials()


def _any_origin(origin: str) -> bool:
    return True


class Authenticator:
    """Verifies credentials with the keys of :class:`AuthSettings`.

    ``allows_origin(origin)`` says whether a page from ``origin`` may use the
    token cookie (pass ``Cors(settings.cors_origins).allows``); without it
    every origin may, as with ``cors_origins = ["*"]``.

    Raises :class:`UsageError` at construction for a key file that cannot be
    read or algorithms that do not fit the key.
    """

    def __init__(self, settings: AuthSettings,
                 allows_origin: Callable[[str], bool] | None = None) -> None:
        self.allows_origin = allows_origin or _any_origin
        self.api_key = settings.api_key or os.environ.get("TIDINGS_API_KEY") or None
        self.policy: Policy = settings.policy(settings.enabled or self.api_key is not None)
        self.enabled = self.policy.enabled
        #: algorithm -> the one key that verifies it
        self._keys: dict[str, Any] = {}
        if settings.jwt_hs256_secret:
            self._keys["HS256"] = settings.jwt_hs256_secret.encode()
        if settings.jwt_public_key_file:
            key, kind = _public_key(settings.jwt_public_key_file)
            algorithms = settings.jwt_algorithms or (_DEFAULT_ALGORITHM[kind],)
            wrong = [a for a in algorithms if a not in PUBLIC_KEY_ALGORITHMS[kind]]
            if wrong:
                raise UsageError(f"[auth] jwt_algorithms {wrong} do not fit an {kind} key; "
                                 f"choose from {', '.join(PUBLIC_KEY_ALGORITHMS[kind])}")
            for algorithm in algorithms:
                self._keys[algorithm] = key
        elif settings.jwt_algorithms and not settings.jwks_url:
            raise UsageError("[auth] jwt_algorithms needs jwt_public_key_file or jwks_url")
        self._init_identity_provider(settings)

    def _init_identity_provider(self, settings: AuthSettings) -> None:
        """``aud``, ``iss``, leeway and JWKS keys (server/jwks.py): tokens of an IdP."""
        #: Keys from ``jwks_url``; the server runs :meth:`JwksKeys.run` (app.py).
        self.jwks = JwksKeys(settings) if settings.jwks_url else None
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway

    # finding and verifying ---------------------------------------------------

    def identify(self, request: Request) -> Credentials:
        """The credentials ``request`` carries; raise :class:`Unauthorized` if they are bad,
        :class:`Forbidden` (``origin_not_allowed``) if they are the cookie and the request
        comes from a page whose origin is not allowed. Answer either to the client.

        With access control off, nothing is looked at: everyone is anonymous.
        """
        if not self.enabled:
            return ANONYMOUS
        authorization = request.header("authorization")
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("Authorization must be 'Bearer <token or API key>'",
                                   code="invalid_token")
            return self.verify(value.strip(), api_key_allowed=True)
        token = request.arg("token")
        if token is not None:
            return self.verify(token)
        token = _cookie(request.header("cookie"), TOKEN_COOKIE)
        if token is None:
            return ANONYMOUS
        self._check_cookie_origin(request.header("origin"))
        return self.verify(token)

    def _check_cookie_origin(self, origin: str | None) -> None:
        """Refuse the cookie from a page of another site (cross-site request forgery).

        Without ``Origin`` the request is not a browser's cross-site one (browsers send it
        on every cross-site POST and CORS request). ``Origin: null`` (sandboxed frames,
        ``file:`` pages) is a page like any other: allowed only if ``allows_origin`` says so.
        """
        if origin is not None and not self.allows_origin(origin):
            raise Forbidden(f"requests from origin {origin[:200]!r} may not use the "
                            f"{TOKEN_COOKIE} cookie (cors_origins); send the token in the "
                            "Authorization header or ?token= instead", code="origin_not_allowed")

    def verify(self, token: str, api_key_allowed: bool = False) -> Credentials:
        """Credentials for ``token`` (a JWT, or the API key if allowed).

        Raises :class:`Unauthorized` with the reason if it is neither.
        """
        if api_key_allowed and self.api_key is not None and hmac.compare_digest(
                _utf8(token), _utf8(self.api_key)):
            return Credentials(api_key=True)
        return Credentials(self.claims(token))

    def claims(self, token: str) -> Claims:
        """The claims of a valid JWT; raise :class:`Unauthorized` with the reason otherwise."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized(f"token longer than {MAX_TOKEN_LENGTH} characters",
                               code="invalid_token")
        if not token.isascii():  # a JWT is base64url and dots; this also keeps out surrogates
            raise Unauthorized("the token is not a JWT (not ASCII)", code="invalid_token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, *_MALFORMED_TOKEN_ERRORS):
            raise Unauthorized("the token is not a JWT", code="invalid_token") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if self.jwks is not None and isinstance(kid, str):
            found = self.jwks.key(kid)  # KeysMissing: the router fetches, then asks again
            if found is None:
                raise Unauthorized(f"no key {kid[:40]!r} in the identity provider's key set",
                                   code="invalid_token")
            key, key_algorithm = found
            if algorithm != key_algorithm:
                raise Unauthorized(f"key {kid[:40]!r} verifies {key_algorithm}, not "
                                   f"{str(algorithm)[:20]!r}", code="invalid_token")
        else:
            key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None or not isinstance(algorithm, str):
            accepted = ", ".join(sorted(self._keys)) or "none (no JWT key configured)"
            if self.jwks is not None:
                accepted += "; or a key of the JWKS URL, named by the token's kid"
            raise Unauthorized(f"tokens signed with {str(algorithm)[:20]!r} are not accepted; "
                               f"accepted: {accepted}", code="invalid_token")
        try:
            payload = jwt.decode(token, key, algorithms=[algorithm], audience=self.audience,
                                 issuer=self.issuer, leeway=self.leeway,
                                 options={"require": ["exp"],
                                          "verify_aud": self.audience is not None})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; get a new one",
                               code="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf)",
                               code="token_not_yet_valid") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}", code="invalid_token") from None
        except _MALFORMED_TOKEN_ERRORS as exc:
            raise Unauthorized(f"invalid token: malformed claims ({type(exc).__name__})",
                               code="invalid_token") from None
        return _claims(payload)

    # deciding ----------------------------------------------------------------

    def check_subscribe(self, channels: Sequence[str], credentials: Credentials) -> None:
        """Raise :class:`Unauthorized` / :class:`Forbidden` unless every channel is allowed."""
        if self.enabled:  # with access control off, every read is allowed: skip the walk
            _raise(self.policy.may_subscribe_all(channels, credentials.claims,
                                                 credentials.api_key))

    def check_publish(self, channel: str, credentials: Credentials) -> None:
        """Raise :class:`Unauthorized` / :class:`Forbidden` unless publishing is allowed."""
        if self.enabled:
            _raise(self.policy.may_publish(channel, credentials.claims, credentials.api_key))


def _raise(refusal: Refusal | None) -> None:
    if refusal is None:
        return
    error: type[ProtocolError] = Unauthorized if refusal.kind == "unauthorized" else Forbidden
    raise error(refusal.reason, code=refusal.code)


def _claims(payload: dict[str, Any]) -> Claims:
    channels = payload.get("channels", {})
    if not isinstance(channels, dict):
        raise Unauthorized("the channels claim must be an object with subscribe and publish "
                           "lists", code="invalid_token")
    grants = []
    for action in ("subscribe", "publish"):
        patterns = channels.get(action, [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise Unauthorized(f"channels.{action} must be a list of names or patterns",
                               code="invalid_token")
        grants.append(tuple(patterns))
    read = channels.get("read", [])
    if not isinstance(read, list) or not all(isinstance(c, str) for c in read):
        raise Unauthorized("channels.read must be a list of channel names", code="invalid_token")
    try:
        read = [check_channel(c) for c in read]
    except InvalidChannel as exc:
        raise Unauthorized(f"channels.read: {exc}", code="invalid_token") from None
    sub = payload.get("sub")
    if isinstance(sub, str) and not _is_unicode(sub):
        # A lone surrogate ("\ud800" in the JSON) cannot be written back (the auth ack).
        raise Unauthorized("the sub claim is not valid Unicode", code="invalid_token")
    info = payload.get("info")
    if info is not None:
        try:  # presence writes it back as it is: it must be JSON we can write
            jsonvalue.encode(info)
        except BadRequest as exc:
            raise Unauthorized(f"the info claim cannot be written back: {exc}",
                               code="invalid_token") from None
    return Claims(sub if isinstance(sub, str) else None, _expiry(payload.get("exp")),
                  grants[0], grants[1], info, tuple(dict.fromkeys(read)))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _expiry(exp: object) -> float:
    """``exp`` as Unix seconds; raise :class:`Unauthorized` unless it is a finite number.

    PyJWT has already checked that ``int(exp)`` works, which a string of digits also
    passes: the sweep must cut such a token at expiry too. What no float holds
    (``10**400``) is refused rather than read as "never".
    """
    try:
        if isinstance(exp, str):
            seconds = float(int(exp))
        elif isinstance(exp, int | float) and not isinstance(exp, bool):
            seconds = float(exp)
        else:
            seconds = math.nan
    except (ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds):
        # Not the value in the message: str() of a long int can raise itself.
        raise Unauthorized("the exp claim must be Unix seconds that a float holds",
                           code="invalid_token")
    return seconds


def _public_key(path: str) -> tuple[Any, str]:
    try:
        with open(path, "rb") as f:
            key = load_pem_public_key(f.read())
    except (OSError, ValueError) as exc:
        raise UsageError(f"[auth] cannot read jwt_public_key_file {path}: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, "EC"
    raise UsageError(f"[auth] {path}: an RSA or EC public key is needed, "
                     f"not {type(key).__name__}")


def _utf8(text: str) -> bytes:
    """``text`` as bytes, lone surrogates too: comparing credentials never raises."""
    return text.encode("utf-8", "surrogatepass")


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value.strip('"')
    return None
