"""The shape of a repeated request (wire/repeat.py): bytes only, no event loop."""

from __future__ import annotations

import contextlib
from typing import Any

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tidings.server.request import _parse_query
from tidings.wire.repeat import CURSOR_BYTES, RequestShape

MAX_URL = 8 * 1024
HEAD = b"Host: h:1\r\nAccept: */*\r\n"


def req(target: bytes, headers: bytes = HEAD, version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + headers + b"\r\n"


def shape_of(target: bytes, **kwargs: Any) -> RequestShape:
    shape = RequestShape.of(req(target, **kwargs), MAX_URL)
    assert shape is not None, target
    return shape


# of ------------------------------------------------------------------------------------------


def test_no_since_is_the_whole_request() -> None:
    data = req(b"/channels/c?wait=30")
    shape = RequestShape.of(data, MAX_URL)
    assert shape == RequestShape(data, b"", False, 0)
    assert shape.match(data) == b""
    assert shape.match(data.replace(b"30", b"31")) is None


@pytest.mark.parametrize("target", [b"/channels/c?since=1-2&wait=30",
                                    b"/channels/c?wait=30&since=1-2",
                                    b"/subscribe?channel=a&since=1-2&channel=b"])
def test_since_once_makes_a_hole(target: bytes) -> None:
    data = req(target)
    shape = shape_of(target)
    assert shape.has_since
    assert shape.before + b"1-2" + shape.after == data
    assert shape.before.endswith(b"since=")
    assert shape.after[:1] in (b"&", b" ")
    assert shape.longest == MAX_URL - (len(target) - 3)
    assert shape.match(data) == b"1-2"


@pytest.mark.parametrize("target", [
    b"/channels/c?since=1-2&since=1-3",      # twice
    b"/channels/c?since=1-2&wait=1&since=0",
    b"/channels/c?%73ince=1-2",              # once, percent-encoded
    b"/channels/c?sinc%65=1-2&wait=1",
    b"/channels/c?wait=1&x+y=2",             # another name the server decodes
    b"/channels/c?since=",                   # empty
    b"/channels/c?since=&wait=1",
    b"/channels/c?since=1+2",                # + is a space
    b"/channels/c?since=1-2#x",
])
def test_requests_parsed_in_full(target: bytes) -> None:
    assert RequestShape.of(req(target), MAX_URL) is None


@pytest.mark.parametrize("target", [
    b"/channels/c?xsince=1-2",               # inside another name
    b"/channels/c?a=since=1-2",              # inside a value
    b"/channels/since=1-2",                  # in the path, no query
    b"/channels/since=1-2?wait=30",          # in the path, before the query
    b"/channels/c?wait=30&x=1-2",
])
def test_without_a_since_parameter_only_the_same_bytes_match(target: bytes) -> None:
    shape = shape_of(target)
    assert not shape.has_since
    assert shape.match(req(target)) == b""
    assert shape.match(req(target.replace(b"1-2", b"1-3"))) is None
    assert shape.match(req(target, HEAD + b"X: 1\r\n")) is None


def test_only_get_http11_without_a_body_makes_a_shape() -> None:
    assert RequestShape.of(req(b"/channels/c?since=1", version=b"HTTP/1.0"), MAX_URL) is None
    assert RequestShape.of(req(b"/channels/c", version=b"HTTP/1.0"), MAX_URL) is None
    post = req(b"/channels/c?since=1").replace(b"GET ", b"POST ", 1)
    assert RequestShape.of(post, MAX_URL) is None
    head = req(b"/channels/c").replace(b"GET ", b"HEAD ", 1)
    assert RequestShape.of(head, MAX_URL) is None
    with_body = req(b"/channels/c?since=1", HEAD + b"Content-Length: 2\r\n") + b"ab"
    assert RequestShape.of(with_body, MAX_URL) is None
    one = req(b"/channels/c?since=1")
    assert RequestShape.of(one + one, MAX_URL) is None
    assert RequestShape.of(one[:-2], MAX_URL) is None  # not whole yet
    assert RequestShape.of(b"GET  HTTP/1.1\r\n\r\n", MAX_URL) is None


def test_percent_encoded_values() -> None:
    target = b"/subscribe?channel=a&channel=b&since=a%3D1-2%2Cb%3D1-3"
    shape = shape_of(target)
    assert shape.match(req(target)) == b"a%3D1-2%2Cb%3D1-3"
    assert shape.match(req(target.replace(b"%3D1-2", b"%3D1-9"))) == b"a%3D1-9%2Cb%3D1-3"
    assert shape_of(b"/channels/c?since=%ZZ").match(req(b"/channels/c?since=1")) == b"1"


def test_a_hole_past_the_url_limit() -> None:
    target = b"/channels/c?since=" + b"1" * 50
    assert RequestShape.of(req(target), len(target)) is not None
    assert RequestShape.of(req(target), len(target) - 1) is None
    shape = RequestShape.of(req(target), len(target) + 2)
    assert shape is not None and shape.longest == 52
    assert shape.match(req(target + b"22")) == b"1" * 50 + b"22"
    assert shape.match(req(target + b"222")) is None


# match -----------------------------------------------------------------------------------------


def test_match_takes_another_value_only_in_the_same_request() -> None:
    target = b"/channels/c?since=1-2&wait=30"
    shape = shape_of(target)
    assert shape.match(req(b"/channels/c?since=7-123456&wait=30")) == b"7-123456"
    assert shape.match(req(b"/channels/c?since=0&wait=30")) == b"0"
    assert shape.match(req(b"/channels/c?since=&wait=30")) is None
    # another header, another header value, another length of a value elsewhere
    assert shape.match(req(target, HEAD + b"X-A: 1\r\n")) is None
    assert shape.match(req(target, HEAD.replace(b"h:1", b"h:2"))) is None
    assert shape.match(req(b"/channels/c?since=1-2&wait=3")) is None
    assert shape.match(req(b"/channels/c?since=1-2&wait=300")) is None
    assert shape.match(req(b"/channels/d?since=1-2&wait=30")) is None
    assert shape.match(req(target, version=b"HTTP/1.0")) is None


def test_match_refuses_two_requests_in_one_read() -> None:
    for target in (b"/channels/c?since=1-2&wait=30", b"/channels/c?wait=30&since=1-2",
                   b"/channels/c?wait=30"):
        one = req(target)
        shape = RequestShape.of(one, MAX_URL)
        assert shape is not None
        assert shape.match(one + one) is None
        assert shape.match(one + one[:10]) is None
        assert shape.match(one[:-1]) is None


@pytest.mark.parametrize("value", [b"1 2", b"1\r\n2", b"1&2", b"1&wait=1", b"1+2", b"1#2",
                                   b"1\r\nX-A: 1", b"1 HTTP/1.1\r\nX: y", b"1?2", b"1/2",
                                   b"1\x00", b"\xff"])
def test_match_refuses_a_value_that_is_not_a_cursor(value: bytes) -> None:
    for target in (b"/channels/c?since=1-2&wait=30", b"/channels/c?wait=30&since=1-2"):
        shape = shape_of(target)
        assert shape.match(req(target.replace(b"1-2", value))) is None


# a tagged shape: If-None-Match follows since -----------------------------------------------------


def tagged(target: bytes, *lines: bytes) -> bytes:
    return req(target, HEAD + b"".join(line + b"\r\n" for line in lines))


def test_a_tagged_shape_takes_the_same_value_in_both_holes() -> None:
    data = tagged(b"/channels/c?since=1-2", b'If-None-Match: "1-2"', b"X-After: 1")
    shape = RequestShape.of(data, MAX_URL, tagged=True)
    assert shape is not None and shape.between is not None
    assert shape.before + b"1-2" + shape.between + b"1-2" + shape.after == data
    assert shape.match(data) == b"1-2"
    again = tagged(b"/channels/c?since=7-123456", b'If-None-Match: "7-123456"', b"X-After: 1")
    assert shape.match(again) == b"7-123456"
    # one hole moved without the other, or a value that differs between them
    for since, tag in ((b"1-3", b"1-2"), (b"1-2", b"1-3"), (b"1-23", b"1-32"), (b"1", b"1-2")):
        changed = tagged(b"/channels/c?since=" + since, b'If-None-Match: "' + tag + b'"',
                         b"X-After: 1")
        assert shape.match(changed) is None, (since, tag)
    assert shape.match(tagged(b"/channels/c?since=1-2", b'If-None-Match: "1-2"')) is None
    # an untagged shape of the same request keeps the header as it is
    plain = RequestShape.of(data, MAX_URL)
    assert plain is not None and plain.between is None and plain.match(again) is None


def test_a_tagged_value_grows_the_header_fields_only_as_far_as_their_room() -> None:
    data = tagged(b"/channels/c?since=1-2", b'If-None-Match: "1-2"')
    for room in (0, 5):
        shape = RequestShape.of(data, MAX_URL, tagged=True, header_room=room)
        assert shape is not None and shape.longest == 3 + room
        assert shape.match(data) == b"1-2"
        fits = b"1-" + b"2" * (1 + room)
        assert shape.match(tagged(b"/channels/c?since=" + fits,
                                  b'If-None-Match: "' + fits + b'"')) == fits
        over = fits + b"3"
        assert shape.match(tagged(b"/channels/c?since=" + over,
                                  b'If-None-Match: "' + over + b'"')) is None
    # an untagged shape's value is in the target only: the header fields do not grow
    plain = RequestShape.of(req(b"/channels/c?since=1-2"), MAX_URL, header_room=0)
    assert plain is not None and plain.longest == MAX_URL - len(b"/channels/c?since=")


@pytest.mark.parametrize("lines", [
    (b'If-None-Match: "1-3"',),                       # another value
    (b'If-None-Match: W/"1-2"',),                     # weak
    (b'If-None-Match: "1-2", "1-5"',),                # a list
    (b'If-None-Match: "1-2"', b'If-None-Match: "1-2"'),  # twice
    (b'If-None-Match: "1-2"', b"if-none-match: *"),
    (),                                               # none
])
def test_a_tag_that_is_not_exactly_since_makes_no_tagged_shape(lines: tuple[bytes, ...]) -> None:
    assert RequestShape.of(tagged(b"/channels/c?since=1-2", *lines), MAX_URL, tagged=True) is None


def test_a_tag_line_in_any_case_and_with_blanks() -> None:
    data = tagged(b"/channels/c?since=1-2", b'if-NONE-match:  "1-2" ')
    shape = RequestShape.of(data, MAX_URL, tagged=True)
    assert shape is not None
    assert shape.match(tagged(b"/channels/c?since=4-5", b'if-NONE-match:  "4-5" ')) == b"4-5"


# against httptools and the server's query parser ---------------------------------------------


class _Parsed:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.requests.append((self.parser.get_method(), self.url, self.headers))
        self.url, self.headers = b"", []


def parse(data: bytes) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] | None:
    parsed = _Parsed()
    try:
        parsed.parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    return parsed.requests


def since_of(url: bytes) -> tuple[str, str | None]:
    """(path, the ``since`` the server reads: the last one, decoded as _parse_query does)."""
    path, _, query = url.partition(b"?")
    params = dict(_parse_query(query.decode("ascii")))
    return path.decode("ascii"), params.get("since")


def decoded(value: bytes) -> str:
    return _parse_query("since=" + value.decode("ascii"))[0][1]


_ALPHABET = sorted(CURSOR_BYTES | set(b" &+#?\r\n\t/\x00\x7f\xff"))
_VALUES = st.binary(min_size=0, max_size=40).map(
    lambda raw: bytes(_ALPHABET[b % len(_ALPHABET)] for b in raw))
_TARGETS = [b"/channels/c?since=1-2&wait=30", b"/channels/c?wait=30&since=1-2",
            b"/subscribe?channel=a&channel=b&since=a%3D1-2&limit=5", b"/channels/c?since=0"]


@settings(max_examples=400, deadline=None)
@given(target=st.sampled_from(_TARGETS), value=_VALUES, other=st.none() | _VALUES)
def test_a_tagged_match_is_the_same_request_with_that_since_and_tag(
        target: bytes, value: bytes, other: bytes | None) -> None:
    """``other``: the value in the second hole (``None``: the same as in the first)."""
    tag = value if other is None else other
    since = target.partition(b"since=")[2].partition(b"&")[0]
    first = req(target, HEAD + b'If-None-Match: "' + since + b'"\r\nX: 1\r\n')
    shape = RequestShape.of(first, MAX_URL, tagged=True)
    assert shape is not None and shape.between is not None
    data = shape.before + value + shape.between + tag + shape.after
    got = shape.match(data)
    if got is None:
        return
    assert got == value == tag
    requests = parse(data)
    assert requests is not None and len(requests) == 1
    _, url, headers = requests[0]
    (_, first_url, first_headers), = parse(first) or [None]
    assert [h for h in headers if h[0] != b"If-None-Match"] == [
        h for h in first_headers if h[0] != b"If-None-Match"]
    assert (b"If-None-Match", b'"' + value + b'"') in headers
    assert url.partition(b"?")[0] == first_url.partition(b"?")[0]
    with contextlib.suppress(UnicodeError):  # (not UTF-8: the repeat falls back on it too)
        assert since_of(url)[1] == decoded(value)


@settings(max_examples=400, deadline=None)
@given(target=st.sampled_from(_TARGETS), value=_VALUES)
@example(target=_TARGETS[0], value=b"1-2 HTTP/1.1\r\n\r\nGET /channels/c?since=1-2")
@example(target=_TARGETS[1], value=b"%26since%3D5")
@example(target=_TARGETS[0], value=b"%8a")  # not UTF-8 once decoded
def test_a_match_is_the_same_request_with_that_since(target: bytes, value: bytes) -> None:
    first = req(target)
    shape = RequestShape.of(first, MAX_URL)
    assert shape is not None
    assert shape.match(first) == target.partition(b"since=")[2].partition(b"&")[0]
    data = shape.before + value + shape.after
    got = shape.match(data)
    if got is None:
        return
    assert got == value
    requests = parse(data)
    assert requests is not None and len(requests) == 1
    method, url, headers = requests[0]
    (_, first_url, first_headers), = parse(first) or [None]
    assert method == b"GET" and headers == first_headers
    assert url.partition(b"?")[0] == first_url.partition(b"?")[0]
    try:
        expected = decoded(value)
    except UnicodeError:
        return  # the repeat falls back on it too (Repeat.answer catches UnicodeError)
    assert since_of(url) == (since_of(first_url)[0], expected)
    # and every other parameter is the first one's
    rest = [p for p in _parse_query(url.partition(b"?")[2].decode()) if p[0] != "since"]
    first_rest = [p for p in _parse_query(first_url.partition(b"?")[2].decode())
                  if p[0] != "since"]
    assert rest == first_rest


# A second ``since`` spelled otherwise: the server's parser reads the last one.


@pytest.mark.parametrize("target", [b"/channels/c?since=1-2&%73ince=1-5",
                                    b"/channels/c?since=1-2&since",
                                    b"/channels/c?since=1-2&sinc%65=1-5"])
def test_since_named_twice_in_any_spelling_is_parsed_in_full(target: bytes) -> None:
    shape = RequestShape.of(req(target), MAX_URL)
    if shape is not None:  # a match must then give the value the server reads
        value = b"1-9"
        data = shape.before + value + shape.after
        assert since_of(parse(data)[0][1])[1] == decoded(shape.match(data))  # type: ignore[index]
