"""Test tools for code that talks to a tidings server: clients we did not write, driven by hand.

The conformance suite (:mod:`tidings.conformance`) and tidings' own tests are
built on these; so can the tests of an application that publishes to, or
reads from, a tidings server::

    from tidings.testing import http_client, open_sse, publish

    async with http_client(server) as http, open_sse(http, "/channels/news") as stream:
        await stream.opening()
        message_id = await publish(http, "news", {"title": "hello"})
        (message,) = await stream.message_objects(1)
        assert message["id"] == message_id

Nothing here uses :mod:`tidings.client`: a server bug must not hide behind
the client's resume rules. ``server`` arguments take a base URL
(``http://host:port``) or anything with a ``url`` attribute, such as a
running :class:`tidings.Server`.

**Waiting and failing.** Every function that waits takes ``within``
(seconds; ``None``: no bound), by default :data:`WAIT`, five times
:data:`UNIT` (1 s, or ``$TIDINGS_TEST_UNIT``). A check that does not hold,
or a wait that runs out, raises :class:`CheckFailed` (an
``AssertionError``) saying what the server answered or what was awaited.

* time and failure: :data:`UNIT`, :data:`WAIT`, :func:`fail_after`,
  :class:`CheckFailed`, :func:`require`, :func:`require_equal`;
* HTTP with httpx: :func:`http_client`, :func:`publish`, :func:`publish_many`,
  :func:`post`, :func:`poll`, :func:`check_poll_answer`,
  :func:`json_body`, :func:`require_error`, :data:`SAMPLE_VALUES`,
  :func:`seq_of`, :func:`epoch_of`;
* Server-Sent Events: :func:`open_sse`, :class:`SseStream`, :class:`SseBlock`;
* WebSocket with ``websockets``: :func:`ws_url`, :func:`open_ws`,
  :func:`recv_json`, :func:`recv_messages`, :func:`command`;
* raw sockets: :func:`open_raw`, :func:`close_raw`, :func:`request_head`,
  :func:`read_response` (:class:`RawResponse`), :class:`RawWebSocket`,
  :func:`client_frame`.

docs/testing.md is the guide.
"""

from tidings.testing._checks import (
    UNIT,
    WAIT,
    CheckFailed,
    HasUrl,
    ServerAddress,
    fail_after,
    require,
    require_equal,
)
from tidings.testing._http import (
    SAMPLE_VALUES,
    check_poll_answer,
    epoch_of,
    http_client,
    json_body,
    poll,
    post,
    publish,
    publish_many,
    require_error,
    seq_of,
)
from tidings.testing._raw import (
    RawResponse,
    RawWebSocket,
    client_frame,
    close_raw,
    open_raw,
    read_response,
    request_head,
    server_frames,
)
from tidings.testing._sse import SseBlock, SseStream, open_sse
from tidings.testing._websocket import command, open_ws, recv_json, recv_messages, ws_url

__all__ = [
    "SAMPLE_VALUES",
    "UNIT",
    "WAIT",
    "CheckFailed",
    "HasUrl",
    "RawResponse",
    "RawWebSocket",
    "ServerAddress",
    "SseBlock",
    "SseStream",
    "check_poll_answer",
    "client_frame",
    "close_raw",
    "command",
    "epoch_of",
    "fail_after",
    "http_client",
    "json_body",
    "open_raw",
    "open_sse",
    "open_ws",
    "poll",
    "post",
    "publish",
    "publish_many",
    "read_response",
    "recv_json",
    "recv_messages",
    "request_head",
    "require",
    "require_equal",
    "require_error",
    "seq_of",
    "server_frames",
    "ws_url",
]
