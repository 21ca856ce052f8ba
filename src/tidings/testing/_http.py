"""HTTP with httpx: publishing, polling, and the shape of the server's answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from tidings.testing._checks import UNIT, CheckFailed, ServerAddress, require, url_of

#: The values every technique must deliver unchanged: nesting, unicode, numbers
#: (integers within the range every JSON implementation keeps exact), and
#: strings that look like SSE fields or contain line ends.
SAMPLE_VALUES: list[Any] = [
    {"nested": {"list": [1, 2.5, -3e-7, True, False, None], "empty": {}, "deep": [[{"a": []}]]}},
    "unicode: héllo wörld ✓ 日本語 😀 \u2028 \u2029 \u0000 \x7f",
    9007199254740991,
    -0.125,
    1.5e300,
    0,
    [],
    {},
    None,
    True,
    "",
    "line one\nline two\r\nline three\rend",
    "data: not an sse field\n\nid: nor this\nevent: close",
    {"quotes \"and\" \\backslashes\\": "</script><!--", "tab\there": [-1, 0.1]},
]


def seq_of(message_id: str) -> int:
    """The sequence number of a message id (``EPOCH-SEQ``)."""
    return int(message_id.rsplit("-", 1)[1])


def epoch_of(message_id: str) -> str:
    """The epoch of a message id (``EPOCH-SEQ``)."""
    return message_id.rsplit("-", 1)[0]


def http_client(server: ServerAddress | None = None, *, timeout: float | None = 10 * UNIT,
                **options: Any) -> httpx.AsyncClient:
    """An httpx client for ``server`` (relative paths), or for any server (absolute URLs).

    ``timeout`` bounds each request (``None``: no bound); ``options`` go to httpx.
    Use it as ``async with http_client(server) as http: ...``.
    """
    if server is not None:
        options["base_url"] = url_of(server)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), **options)


def json_body(response: httpx.Response, what: str) -> Any:
    """The JSON body of ``response``; fails saying ``what`` answered if it is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise CheckFailed(f"{what}: the answer is not JSON: {response.text[:200]!r}") from None


def _channel_url(channel: str, server: ServerAddress | None) -> str:
    return f"{url_of(server) if server is not None else ''}/channels/{channel}"


async def post(http: httpx.AsyncClient, channel: str, value: Any,
                       headers: dict[str, str] | None = None, *,
                       server: ServerAddress | None = None) -> httpx.Response:
    """POST ``value`` (as JSON) to ``channel``; return the answer, whatever it is.

    ``server``: where to post if ``http`` has no base URL. :func:`publish`
    is this plus a check that the message was accepted.
    """
    # Not ``json=value``: httpx sends no body at all for ``json=None``.
    return await http.post(_channel_url(channel, server), content=json.dumps(value),
                           headers={"Content-Type": "application/json", **(headers or {})})


async def publish(http: httpx.AsyncClient, channel: str, value: Any, *,
                  headers: dict[str, str] | None = None,
                  server: ServerAddress | None = None) -> str:
    """Publish ``value``; check the ``201`` answer and return the new message id."""
    response = await post(http, channel, value, headers, server=server)
    where = f" at {url_of(server)}" if server is not None else ""
    require(response.status_code == 201, f"publishing on {channel}{where} answered "
                                         f"{response.status_code}: {response.text[:200]}")
    body = json_body(response, "the publish answer")
    require(isinstance(body, dict) and body.get("channel") == channel
            and isinstance(body.get("id"), str) and isinstance(body.get("time"), int),
            f"the publish answer is not {{channel, id, time}}: {body!r}")
    return str(body["id"])


async def publish_many(http: httpx.AsyncClient, channel: str, values: Sequence[Any]) -> list[str]:
    """Publish ``values`` one after the other; return their ids."""
    return [await publish(http, channel, value) for value in values]


async def poll(http: httpx.AsyncClient, path: str, *, headers: dict[str, str] | None = None,
               **params: Any) -> dict[str, Any]:
    """One poll (or long poll, with ``wait=``) that must answer ``200``; return the answer.

    ``params`` make the query: ``poll(http, "/subscribe", channel=["a", "b"],
    since=cursor, wait=30)``. The answer is checked with :func:`check_poll_answer`.
    """
    response = await http.get(path, params=params, headers=headers)
    require(response.status_code == 200,
            f"GET {path} {params or ''} answered {response.status_code}: {response.text[:200]}")
    return check_poll_answer(json_body(response, f"GET {path}"))


def check_poll_answer(answer: Any) -> dict[str, Any]:
    """``answer`` if it is a poll answer (``messages``, ``next``, and a gap's fields together)."""
    require(isinstance(answer, dict) and isinstance(answer.get("messages"), list)
            and isinstance(answer.get("next"), str),
            f"a poll answer must be {{messages: [...], next: cursor, ...}}, not {answer!r}")
    gap, gaps = answer.get("gap"), answer.get("gaps")
    require((gap is None and gaps is None) or (gap is True and isinstance(gaps, list) and gaps),
            f'"gap": true and a non-empty "gaps" list come together: {answer!r}')
    return dict(answer)


def require_error(response: httpx.Response, status: int, code: str, what: str) -> dict[str, Any]:
    """``response`` must be ``status`` with a JSON body ``{"error": code, "message": text}``."""
    require(response.status_code == status,
            f"{what}: expected {status} {code}, got {response.status_code}: {response.text[:200]}")
    require(response.headers.get("content-type", "").startswith("application/json"),
            f"{what}: the error answer is not application/json: "
            f"{response.headers.get('content-type')!r}")
    body = json_body(response, what)
    require(isinstance(body, dict) and body.get("error") == code
            and isinstance(body.get("message"), str) and body["message"],
            f'{what}: expected {{"error": "{code}", "message": text}}, got {body!r}')
    return dict(body)
