"""The token cookie and cross-site request forgery (docs/security.md, Origins).

A browser attaches the ``tidings_token`` cookie to requests that other sites'
pages make; a request the cookie authenticates is refused (``403
origin_not_allowed``) when its ``Origin`` is not in ``cors_origins``. The
``Authorization`` header and ``?token=`` are not ambient: no page can add them
to a visitor's request without knowing the token.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from authkit import API_KEY, AUTH, bearer, refusal, token
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tidings.errors import Forbidden, Unauthorized
from tidings.server.auth import ANONYMOUS, Authenticator
from tidings.server.cors import Cors
from tidings.server.request import Request
from tidings.settings import AuthSettings
from tidings.testing import http_client, post, ws_url

APP = "https://app.example"
EVIL = "https://evil.example"


def request(target: str = "/channels/chat:a", **headers: str) -> Request:
    return Request("POST", target.encode(), headers)


def cookie(value: str) -> str:
    return f"theme=dark; tidings_token={value}"


def authenticator(*origins: str) -> Authenticator:
    return Authenticator(AUTH, Cors(origins).allows)


def test_the_cookie_from_another_origin_is_refused() -> None:
    granted = token(publish=["chat:a"])
    for origin in (EVIL, "null", "https://app.example.evil.example", APP + ":8443",
                   "http://app.example", f"{APP}, {EVIL}"):
        with pytest.raises(Forbidden) as info:
            authenticator(APP).identify(request(cookie=cookie(granted), origin=origin))
        assert (info.value.status, info.value.code) == (403, "origin_not_allowed")
        assert origin in str(info.value)


def test_the_cookie_from_an_allowed_origin_or_without_one_is_used() -> None:
    granted = token(publish=["chat:a"])
    for headers in ({"origin": APP}, {}):
        credentials = authenticator(APP).identify(request(cookie=cookie(granted), **headers))
        assert credentials.claims is not None and credentials.claims.sub == "alice"


def test_origin_null_is_allowed_only_if_listed_or_any() -> None:
    granted = cookie(token())
    for origins in (("null",), ("*",), (APP, "null")):
        assert authenticator(*origins).identify(request(cookie=granted, origin="null")).claims
    with pytest.raises(Forbidden):
        authenticator(APP).identify(request(cookie=granted, origin="null"))


def test_the_origin_is_checked_before_the_token() -> None:
    # A page elsewhere learns nothing about the cookie, not even whether it is valid.
    with pytest.raises(Forbidden):
        authenticator(APP).identify(request(cookie=cookie("garbage"), origin=EVIL))
    with pytest.raises(Unauthorized):
        authenticator(APP).identify(request(cookie=cookie("garbage"), origin=APP))


def test_the_header_and_the_query_are_not_checked() -> None:
    granted = token(publish=["chat:a"])
    auth = authenticator(APP)
    # Each wins over the cookie, which is then not used.
    for target, headers in (("/channels/chat:a", {"authorization": f"Bearer {granted}"}),
                            ("/channels/chat:a", {"authorization": f"Bearer {API_KEY}"}),
                            (f"/channels/chat:a?token={granted}", {})):
        credentials = auth.identify(request(target, origin=EVIL, cookie=cookie("garbage"),
                                            **headers))
        assert credentials.api_key or credentials.claims is not None


def test_without_a_cookie_the_origin_does_not_matter() -> None:
    assert authenticator(APP).identify(request(origin=EVIL)) == ANONYMOUS
    assert authenticator(APP).identify(request(origin=EVIL, cookie="theme=dark")) == ANONYMOUS


def test_with_access_control_off_nothing_is_checked() -> None:
    auth = Authenticator(AuthSettings(), Cors([APP]).allows)
    assert auth.identify(request(cookie=cookie("garbage"), origin=EVIL)) == ANONYMOUS


def test_without_an_origin_check_every_origin_may_use_the_cookie() -> None:
    # Authenticator(settings) alone behaves as with cors_origins = ["*"].
    credentials = Authenticator(AUTH).identify(request(cookie=cookie(token()), origin=EVIL))
    assert credentials.claims is not None


# Over the network ----------------------------------------------------------------------


async def guarded_server(make_server: Any) -> Any:
    """A server with access control, accepting pages from :data:`APP` only."""
    return await make_server(auth=AUTH, cors_origins=(APP,))


async def test_a_forged_publish_with_the_cookie_is_403_and_not_published(
        make_server: Any) -> None:
    server = await guarded_server(make_server)
    victim = {"Cookie": cookie(token(subscribe=["chat:*"], publish=["chat:*"]))}
    async with http_client(server) as client:
        for origin in (EVIL, "null"):
            response = await post(client, "chat:a", "forged", {**victim, "Origin": origin})
            assert refusal(response) == (403, "origin_not_allowed")
        # The victim's own pages, and programs (no Origin), still use the cookie.
        assert (await post(client, "chat:a", "mine", {**victim, "Origin": APP})
                ).status_code == 201
        assert (await post(client, "chat:a", "program", victim)).status_code == 201
        # A token in the header is not ambient: a page that has it may send it from anywhere.
        header = bearer(token(publish=["chat:a"]))
        assert (await post(client, "chat:a", "header", {**header, "Origin": EVIL})
                ).status_code == 201
        # Reads with the cookie are refused as well.
        response = await client.get("/channels/chat:a", params={"since": "0"},
                                    headers={**victim, "Origin": EVIL})
        assert refusal(response) == (403, "origin_not_allowed")
        response = await client.get("/channels/chat:a", params={"since": "0"},
                                    headers={**victim, "Origin": APP})
        assert [m["data"] for m in response.json()["messages"]] == ["mine", "program", "header"]


async def test_a_websocket_with_the_cookie_from_another_origin_is_403(make_server: Any) -> None:
    server = await guarded_server(make_server)
    victim = {"Cookie": cookie(token(subscribe=["chat:*"]))}
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(server, "/channels/chat:a"), origin=Origin(EVIL),
                           additional_headers=victim):
            pass
    assert info.value.response.status_code == 403
    assert json.loads(info.value.response.body or b"{}")["error"] == "origin_not_allowed"


async def test_the_server_checks_the_origin_of_cookie_requests(make_server: Any) -> None:
    server = await make_server(auth=AUTH, cors_origins=(APP,))
    victim = {"Cookie": cookie(token(publish=["chat:*"])), "Origin": EVIL}
    async with http_client(server) as client:
        assert refusal(await post(client, "chat:a", 1, victim)) == (403, "origin_not_allowed")
