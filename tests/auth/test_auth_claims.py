"""Malformed claims: whatever a signed token holds, it is refused with ``401``, never
with an exception that escapes the server (docs/security.md, Tokens).

The tokens are signed with the right key, so each case reaches the claim checks:
what an issuer with a bug, or anyone holding the HS256 secret, could send.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from authkit import AUTH, bearer, refusal, signed, token
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from tidings.errors import Unauthorized
from tidings.server.auth import Authenticator
from tidings.testing import command, http_client, post, ws_url
from tidings.wire import commands

HUGE = "1" + "0" * 400  # no float holds it
LONGEST = "9" * 4400  # over Python's int <-> str limit (4300 digits)


def valid_exp() -> int:
    return int(time.time()) + 3600


def payload(**claims: str) -> str:
    """A payload from JSON texts, with a valid ``exp`` unless ``claims`` gives one."""
    texts = {"exp": str(valid_exp()), **claims}
    return "{" + ",".join(f'"{name}":{text}' for name, text in texts.items()) + "}"


MALFORMED = [
    # exp: numbers no float holds, as numbers or as strings of digits
    ("exp", HUGE), ("exp", json.dumps(HUGE)), ("exp", str(2**1024)),
    ("exp", LONGEST), ("exp", json.dumps(LONGEST)),
    ("exp", "1e400"), ("exp", "-1e400"), ("exp", "NaN"), ("exp", "Infinity"),
    ("exp", "-Infinity"),
    ("exp", "[1]"), ("exp", "{}"), ("exp", '"soon"'), ("exp", '"1e400"'), ("exp", '"inf"'),
    ("exp", "null"), ("exp", '""'),
    ("nbf", "1e400"), ("nbf", "-1e400"), ("nbf", "NaN"), ("nbf", LONGEST), ("nbf", '"x"'),
    ("nbf", "[]"), ("nbf", json.dumps(LONGEST)),
    ("iat", "1e400"), ("iat", "-1e400"), ("iat", "NaN"), ("iat", LONGEST), ("iat", '"x"'),
    ("iat", "{}"),
    ("sub", "5"), ("sub", "[]"), ("sub", "{}"), ("sub", LONGEST), ("sub", "1e400"),
    ("channels", "[]"), ("channels", "null"), ("channels", '"*"'), ("channels", "5"),
    ("channels", '{"subscribe":"*"}'), ("channels", '{"subscribe":[1]}'),
    ("channels", '{"publish":{}}'), ("channels", '{"subscribe":[["a"]]}'),
    ("channels", '{"subscribe":[1e400]}'), ("channels", '{"publish":null}'),
    ("channels", f'{{"subscribe":[{LONGEST}]}}'),
]


@pytest.mark.parametrize(("claim", "text"), MALFORMED,
                         ids=[f"{claim}={text[:12]}" for claim, text in MALFORMED])
def test_malformed_claims_are_invalid_tokens(claim: str, text: str) -> None:
    auth = Authenticator(AUTH)
    with pytest.raises(Unauthorized) as info:
        auth.verify(signed(payload(**{claim: text})))
    assert (info.value.code, info.value.status) == ("invalid_token", 401)


@pytest.mark.parametrize("text", ["[1]", '"x"', "1e400", "null", LONGEST, "[" * 3000])
def test_a_payload_that_is_not_an_object_is_an_invalid_token(text: str) -> None:
    with pytest.raises(Unauthorized) as info:
        Authenticator(AUTH).verify(signed(text))
    assert info.value.code == "invalid_token"


def test_a_far_but_well_formed_time_keeps_its_meaning() -> None:
    auth = Authenticator(AUTH)
    far = 10**300  # a float holds it: a token that practically never expires
    assert auth.verify(signed(payload(exp=str(far)))).expires == float(far)
    assert auth.verify(signed(payload(exp=json.dumps(str(valid_exp()))))).expires > time.time()
    for claims, code in (({"nbf": HUGE}, "token_not_yet_valid"),
                         ({"iat": HUGE}, "token_not_yet_valid"),
                         ({"exp": "-" + HUGE}, "token_expired")):
        with pytest.raises(Unauthorized) as info:
            auth.verify(signed(payload(**claims)))
        assert info.value.code == code


@pytest.mark.parametrize("text", ["\ud800.a.b", "é.é.é", "\uff41.b.c", "\x00"])
def test_a_token_that_is_not_ascii_is_an_invalid_token(text: str) -> None:
    auth = Authenticator(AUTH)
    for api_key_allowed in (False, True):
        with pytest.raises(Unauthorized) as info:
            auth.verify(text, api_key_allowed=api_key_allowed)
        assert info.value.code == "invalid_token"


ODD_TEXTS = st.sampled_from([
    HUGE, json.dumps(HUGE), str(2**1024), LONGEST[:4301], "1e400", "-1e400", "NaN", "Infinity",
    "1e308", "-0", "0", "1.5", "true", "false", "null", "[]", "{}", '"x"', '"\\ud800"', '""',
    json.dumps(str(valid_exp())), str(valid_exp()), str(valid_exp() - 7200), '"1e400"',
    '{"subscribe":["*"],"publish":["chat:*"]}', '{"subscribe":[1e400]}', '{"publish":"*"}',
    '{"subscribe":["\\ud800"]}', '"' + "a" * 2000 + '"',
])


@given(st.dictionaries(st.sampled_from(["exp", "nbf", "iat", "sub", "channels", "jti", "aud"]),
                       ODD_TEXTS, max_size=5))
def test_any_claims_give_credentials_or_unauthorized(claims: dict[str, str]) -> None:
    """Whatever the claims, verify returns or raises :class:`Unauthorized`; what it returns
    can be answered (the WebSocket ``auth`` reply carries ``sub`` and ``exp``)."""
    try:
        credentials = Authenticator(AUTH).verify(signed(payload(**claims)))
    except Unauthorized as exc:
        assert exc.status == 401
        return
    assert credentials.claims is not None
    assert math.isfinite(credentials.expires)
    commands.ack_frame(1, sub=credentials.claims.sub, exp=credentials.claims.expires)


# Over the network: the refusal is an answer, and the server goes on serving. ------------


async def test_an_overflowing_exp_is_401_over_http(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with http_client(server) as client:
        for text in (HUGE, json.dumps(HUGE), "1e400"):
            forged = bearer(signed(payload(exp=text, channels='{"publish":["chat:a"]}')))
            assert refusal(await post(client, "chat:a", 1, forged)) == (401, "invalid_token")
            response = await client.get("/channels/chat:a", params={"token": forged})
            assert refusal(response) == (401, "invalid_token")
        granted = bearer(token(publish=["chat:a"]))
        assert (await post(client, "chat:a", 1, granted)).status_code == 201


async def test_a_malformed_token_in_an_auth_command_is_an_error_reply(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with connect(ws_url(server, "/subscribe")) as ws:
        tokens = [signed(payload(exp=HUGE)), signed(payload(exp=json.dumps(HUGE))),
                  "\ud800" + token()]
        for req, text in enumerate(tokens, 1):
            reply = await command(ws, type="auth", req=req, token=text)
            assert (reply["type"], reply["error"]) == ("error", "invalid_token"), reply
        # The connection is still served.
        reply = await command(ws, type="auth", req=99, token=token(subscribe=["chat:a"]))
        assert (reply["type"], reply["sub"]) == ("ack", "alice")


def test_a_sub_that_is_not_unicode_is_an_invalid_token() -> None:
    """A lone surrogate could not be written back in the auth command's ack."""
    with pytest.raises(Unauthorized) as info:
        Authenticator(AUTH).verify(signed(payload(sub='"\\ud800"')))
    assert info.value.code == "invalid_token"
