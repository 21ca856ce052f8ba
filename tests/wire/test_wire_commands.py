"""The WebSocket command protocol: parsing, refusals, reply frames."""

from __future__ import annotations

import json

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tidings.errors import BadRequest, InvalidChannel, InvalidCursor
from tidings.wire import commands
from tidings.wire.commands import CommandError, PingCommand, Publish, Subscribe, Unsubscribe


def frame_json(data: bytes) -> object:
    """Decode one server frame with a real client and parse its JSON text."""
    peer = ClientProtocol(parse_uri("ws://localhost/"), state=State.OPEN, max_size=None)
    peer.receive_data(data)
    assert peer.parser_exc is None
    [event] = peer.events_received()
    assert event.opcode is Opcode.TEXT and event.fin
    return json.loads(bytes(event.data).decode("utf-8"))


def refused(text: str) -> CommandError:
    with pytest.raises(CommandError) as info:
        commands.parse(text)
    return info.value


# Commands -------------------------------------------------------------------


def test_subscribe() -> None:
    assert commands.parse('{"type":"subscribe","req":1,"channel":"prices"}') == Subscribe(
        1, "prices", None)
    assert commands.parse(
        '{"type":"subscribe","req":"r1","channel":"prices","since":"k2j4h5g6-17"}'
    ) == Subscribe("r1", "prices", "k2j4h5g6-17")


def test_subscribe_since_null_means_absent() -> None:
    assert commands.parse('{"type":"subscribe","req":1,"channel":"a","since":null}') == (
        Subscribe(1, "a", None))


def test_unsubscribe() -> None:
    assert commands.parse('{"type":"unsubscribe","req":2,"channel":"prices"}') == Unsubscribe(
        2, "prices")


def test_publish_compacts_data() -> None:
    command = commands.parse(
        '{"type":"publish","req":3,"channel":"prices","data":{ "AAPL" : 187.2 }}')
    assert command == Publish(3, "prices", b'{"AAPL":187.2}')


@pytest.mark.parametrize(("data", "encoded"), [("null", b"null"), ('"é"', '"é"'.encode()),
                                               ("[]", b"[]"), ("0", b"0")])
def test_publish_any_json_value(data: str, encoded: bytes) -> None:
    command = commands.parse('{"type":"publish","req":3,"channel":"c","data":%s}' % data)
    assert isinstance(command, Publish)
    assert command.data == encoded


def test_ping() -> None:
    assert commands.parse('{"type":"ping","req":4}') == PingCommand(4)
    assert commands.parse('{"req":"x","type":"ping","extra":1}') == PingCommand("x")


@pytest.mark.parametrize("req", [0, -1, 2**70, "", "r"])
def test_req_may_be_any_string_or_integer(req: object) -> None:
    assert commands.parse(json.dumps({"type": "ping", "req": req})) == PingCommand(req)


# Refusals -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "not json", "{", '{"type":"ping","req":1', "[1,",
                                  "NaN", '{"type":"ping","req":NaN}'])
def test_not_json(text: str) -> None:
    error = refused(text)
    assert error.req is None
    assert error.error.code == "invalid_json"


@pytest.mark.parametrize("text", ["[]", "1", '"ping"', "null", "true"])
def test_not_an_object(text: str) -> None:
    error = refused(text)
    assert error.req is None
    assert error.error.code == "invalid_command"


@pytest.mark.parametrize("req", ["missing", None, True, False, 1.5, [1], {"a": 1}])
def test_bad_req(req: object) -> None:
    value: dict[str, object] = {"type": "ping"}
    if req != "missing":
        value["req"] = req
    error = refused(json.dumps(value))
    assert error.req is None
    assert error.error.code == "invalid_command"
    assert "req" in str(error.error)


@pytest.mark.parametrize("kind", [None, "", "PING", "publish_all", 1, ["ping"]])
def test_unknown_type(kind: object) -> None:
    value: dict[str, object] = {"req": 7}
    if kind is not None:
        value["type"] = kind
    error = refused(json.dumps(value))
    assert error.req == 7
    assert error.error.code == "unknown_command"


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "publish"])
@pytest.mark.parametrize("channel", ["missing", None, 1, ["a"]])
def test_missing_channel(kind: str, channel: object) -> None:
    value: dict[str, object] = {"type": kind, "req": 8, "data": 1}
    if channel != "missing":
        value["channel"] = channel
    error = refused(json.dumps(value))
    assert error.req == 8
    assert error.error.code == "invalid_command"


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "publish"])
@pytest.mark.parametrize("channel", ["", "a,b", "a=b", "a b", "x" * 129, "é"])
def test_bad_channel(kind: str, channel: str) -> None:
    error = refused(json.dumps({"type": kind, "req": "r", "channel": channel, "data": 1}))
    assert error.req == "r"
    assert isinstance(error.error, InvalidChannel)
    assert error.error.code == "invalid_channel"


@pytest.mark.parametrize("since", [0, 17, True, ["k2j4h5g6-1"], {}])
def test_since_not_a_string(since: object) -> None:
    error = refused(json.dumps({"type": "subscribe", "req": 9, "channel": "a", "since": since}))
    assert error.req == 9
    assert error.error.code == "invalid_command"
    assert "since" in str(error.error)


def test_publish_without_data() -> None:
    error = refused('{"type":"publish","req":10,"channel":"a"}')
    assert error.req == 10
    assert error.error.code == "invalid_command"
    assert "data" in str(error.error)


def test_publish_with_a_lone_surrogate_is_refused() -> None:
    error = refused('{"type":"publish","req":11,"channel":"a","data":"\\ud800"}')
    assert error.req == 11
    assert error.error.code == "invalid_json"


def test_command_error_message() -> None:
    error = refused('{"type":"nope","req":1}')
    assert str(error) == str(error.error)
    assert "nope" in str(error)


# Reply frames -----------------------------------------------------------------


def test_ack_frame() -> None:
    assert frame_json(commands.ack_frame(1)) == {"type": "ack", "req": 1}
    assert frame_json(commands.ack_frame("r", channel="a", id="k2j4h5g6-1", time=5)) == {
        "type": "ack", "req": "r", "channel": "a", "id": "k2j4h5g6-1", "time": 5,
    }


def test_error_frame() -> None:
    error = refused('{"type":"subscribe","req":3,"channel":"a,b"}')
    assert frame_json(commands.error_frame(error.req, error.error)) == {
        "type": "error", "req": 3, "error": "invalid_channel", "message": str(error.error),
    }


def test_error_frame_without_req() -> None:
    assert frame_json(commands.error_frame(None, BadRequest("nope"))) == {
        "type": "error", "req": None, "error": "bad_request", "message": "nope",
    }
    assert frame_json(commands.error_frame(5, InvalidCursor("bad cursor é"))) == {
        "type": "error", "req": 5, "error": "invalid_cursor", "message": "bad cursor é",
    }


def test_subscribed_frame() -> None:
    assert frame_json(commands.subscribed_frame("prices", "k2j4h5g6-3", "c-1")) == {
        "type": "subscribed", "channel": "prices", "next": "k2j4h5g6-3", "client": "c-1",
    }


def test_gap_frame() -> None:
    gap = {"channel": "a", "from": "k2j4h5g6-1", "to": "k2j4h5g6-5", "reason": "expired",
           "missed": 4}
    assert frame_json(commands.gap_frame(gap)) == {"type": "gap", **gap}
