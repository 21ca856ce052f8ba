"""examples/django_publish answers tidings' hooks over HTTP: Django's own login session
decides who reads what on a separate tidings, on every technique.

Django runs as its README says (``runserver``); tidings calls it with
``[hooks]``; clients we did not write (httpx, ``websockets``) log in to Django
and read from tidings with the session cookie Django set.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from djangokit import django
from websockets.exceptions import InvalidStatus

from conftest import ServerFactory
from tidings.settings import HooksSettings
from tidings.testing import UNIT, http_client, open_sse, open_ws, recv_json, require_error

SECRET = "the-shop-and-tidings-share-this"


def hooks(app: str, secret: str = SECRET) -> HooksSettings:
    return HooksSettings(connect_url=f"{app}/tidings/connect",
                         subscribe_url=f"{app}/tidings/subscribe", secret=secret,
                         forward_cookies=("sessionid",), timeout=10 * UNIT)


async def login(app: str, user: str) -> dict[str, str]:
    """Log in to the shop; the ``Cookie`` header a browser would then send to tidings."""
    async with httpx.AsyncClient(base_url=app, timeout=10 * UNIT) as shop:
        answer = await shop.post("/login", json={"username": user, "password": f"pw-{user}"})
    assert answer.status_code == 200, answer.text
    return {"Cookie": f"sessionid={answer.cookies['sessionid']}"}


async def test_djangos_session_decides_on_every_technique(make_server: ServerFactory,
                                                          tmp_path: Path) -> None:
    async with django("http://127.0.0.1:9", tmp_path, users=("alice",),
                      TIDINGS_HOOKS_SECRET=SECRET) as (app, _log):
        server = await make_server(hooks=hooks(app))
        alice = await login(app, "alice")
        async with http_client(server) as http:
            anonymous = await http.get("/channels/orders")
            forged = await http.get("/channels/orders", headers={"Cookie": "sessionid=forged"})
            poll = await http.get("/channels/orders", headers=alice)
            longpoll = await http.get("/channels/user:alice", headers=alice,
                                      params={"wait": "0.01"})
            theirs = await http.get("/channels/user:bob", headers=alice)
            async with open_sse(http, "/channels/orders", headers=alice) as stream:
                await stream.opening()
            async with open_ws(server, "/channels/user:alice", additional_headers=alice) as ws:
                subscribed = await recv_json(ws)
            with pytest.raises(InvalidStatus) as refused:
                async with open_ws(server, "/channels/orders"):
                    pass
    require_error(anonymous, 401, "login_required", "a read without Django's session")
    require_error(forged, 401, "login_required", "a made-up session cookie")
    assert (poll.status_code, longpoll.status_code) == (200, 200)
    require_error(theirs, 403, "not_yours", "another user's channel")
    assert subscribed["type"] == "subscribed"
    assert refused.value.response.status_code == 401


async def test_a_wrong_secret_is_refused_by_django(make_server: ServerFactory,
                                                  tmp_path: Path) -> None:
    async with django("http://127.0.0.1:9", tmp_path, users=("alice",),
                      TIDINGS_HOOKS_SECRET=SECRET) as (app, _log):
        server = await make_server(hooks=hooks(app, secret="not-what-the-shop-expects"))
        alice = await login(app, "alice")
        async with http_client(server) as http:
            answer = await http.get("/channels/orders", headers=alice)
    require_error(answer, 403, "bad_secret", "a hook call with the wrong secret")
