"""A chat in FastAPI with tidings mounted: ``uvicorn app:app`` (see README.md).

* **Login** by the application's own session cookie: ``on_connect`` turns the
  cookie into a user, or refuses with ``401 login_required``.
* **Rooms** are channels ``room:NAME`` (and ``typing:NAME`` for the typing
  indicator); ``on_subscribe`` allows them to anyone logged in, except
  ``room:staff``, and refuses another user's private channel.
* **Messages** are checked by ``on_publish``: a string of 1 to 500 characters,
  stored as ``{"type": "chat", "from": user, "text": ...}``.
* **A private channel per user**, ``private:USER``, subscribed server-side at
  login (``server.subscribe_user``): every connection of the user reads it
  without asking. The application writes to it: a mention (``@bob``) tells bob.
* **Typing** over the WebSocket ``rpc`` command: ``on_rpc("typing", {"room"})``
  publishes a short-lived event on ``typing:ROOM``.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse

import tidings

#: Where the page is; served as it is.
PAGE = Path(__file__).with_name("index.html")
#: The application's session cookie.
COOKIE = "chat_session"
#: Rooms only staff may read.
STAFF_ROOMS = {"room:staff"}
STAFF = {"admin"}
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MENTION = re.compile(r"@([a-z][a-z0-9_]{0,31})")

server = tidings.Server(tidings.Settings(), listen=False)
#: session id -> user name (an application would keep these in its database).
sessions: dict[str, str] = {}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with server:
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/rt", server.asgi)


# the application's own pages -------------------------------------------------------------

@app.get("/", response_class=HTMLResponse)
async def index(request: Request) -> Any:
    if sessions.get(request.cookies.get(COOKIE, "")) is None:
        return HTMLResponse(LOGIN_FORM)
    return HTMLResponse(PAGE.read_text())


@app.post("/login")
async def login(request: Request) -> Any:
    # The form, read without python-multipart (FastAPI's Form needs it).
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    name = form.get("name", [""])[0].strip().lower()
    if NAME.fullmatch(name) is None:
        return HTMLResponse(LOGIN_FORM.replace("<!--error-->", "<p>Letters, digits and _ "
                                               "only, starting with a letter.</p>"), 400)
    session = secrets.token_urlsafe(18)
    sessions[session] = name
    # Every connection of this user reads its private channel, on every node, from now on.
    await server.subscribe_user(name, f"private:{name}")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, session, httponly=True, samesite="lax")
    return response


@app.post("/logout")
async def logout(request: Request) -> Any:
    sessions.pop(request.cookies.get(COOKIE, ""), None)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


LOGIN_FORM = """<!doctype html><meta charset="utf-8"><title>tidings chat: log in</title>
<form method="post" action="/login"><!--error-->
<label>Your name <input name="name" autofocus required maxlength="32"></label>
<button>Log in</button></form>"""


# what tidings asks the application -------------------------------------------------------

@server.on_connect
async def on_connect(request: tidings.ConnectRequest) -> tidings.Identity:
    user = sessions.get(request.cookies.get(COOKIE, ""))
    if user is None:
        raise tidings.Refuse("log in first", status=401, code="login_required")
    return tidings.Identity(user, info={"name": user})


@server.on_subscribe
async def on_subscribe(user: str | None, channel: str) -> bool:
    if channel.startswith("private:"):
        return channel == f"private:{user}"
    if channel in STAFF_ROOMS:
        return user in STAFF
    return channel.startswith(("room:", "typing:"))


@server.on_publish
async def on_publish(user: str | None, channel: str, data: Any) -> tidings.Replace:
    if not channel.startswith("room:") or not await on_subscribe(user, channel):
        raise tidings.Refuse(f"you may not write in {channel}")
    if not isinstance(data, str) or not 0 < len(data.strip()) <= 500:
        raise tidings.Refuse("a message is a string of 1 to 500 characters",
                             code="invalid_message")
    text = data.strip()
    for name in set(MENTION.findall(text)) - {user}:
        await server.publish(f"private:{name}", {"type": "mention", "from": user,
                                                 "room": channel, "text": text})
    return tidings.Replace({"type": "chat", "from": user, "text": text})


@server.on_rpc
async def on_rpc(user: str | None, method: str, data: Any) -> Any:
    if method != "typing" or not isinstance(data, dict) or not isinstance(data.get("room"), str):
        raise tidings.Refuse("the only method is typing, with {\"room\": \"room:NAME\"}",
                             code="unknown_method")
    room = data["room"]
    if not room.startswith("room:") or not await on_subscribe(user, room):
        raise tidings.Refuse(f"you are not in {room}")
    await server.publish("typing:" + room.removeprefix("room:"), {"from": user})
    return {"ok": True}
