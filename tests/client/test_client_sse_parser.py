"""The client's event-stream parser, against the rules of the HTML standard."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.client._sse import Checkpoint, Comment, Event, SseError, SseParser


def parse(data: bytes) -> list[object]:
    return list(SseParser().feed(data))


def test_a_tidings_stream() -> None:
    parser = SseParser()
    items = parser.feed(b'retry: 2000\nid: abcdefgh-3\n\n:\n\nid: abcdefgh-4\n'
                        b'data: {"x":1}\n\nevent: gap\nid: c\ndata: {}\n\n')
    assert items == [Checkpoint("abcdefgh-3"), Comment(""), Event("message", '{"x":1}',
                     "abcdefgh-4"), Event("gap", "{}", "c")]
    assert parser.retry == 2000
    assert parser.last_event_id == "c"


def test_multi_line_data_and_line_endings() -> None:
    assert parse(b"data: one\r\ndata:two\rdata:  three\n\n") == [
        Event("message", "one\ntwo\n three", "")]


def test_fields_the_standard_ignores_or_refuses() -> None:
    parser = SseParser()
    items = parser.feed(b"\xef\xbb\xbfdata: bom\n\nretry: 12x\nid: a\0b\nfoo: bar\ndata\n\n")
    assert items == [Event("message", "bom", ""), Event("message", "", "")]
    assert parser.retry is None
    assert parser.last_event_id == ""


def test_an_event_without_data_is_not_dispatched() -> None:
    assert parse(b"event: gap\n\n: comment text\n\n") == [Comment("comment text")]


def test_an_unfinished_event_waits_for_its_blank_line() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"\r") == [Event("message", "x", "")]
    assert parser.feed(b"\ndata: y\n\n") == [Event("message", "y", "")]


def test_lines_past_the_limit_are_refused() -> None:
    with pytest.raises(SseError):
        SseParser(max_line=10).feed(b"data: " + b"x" * 20)
    with pytest.raises(SseError):
        SseParser(max_line=10).feed(b"data: 12345\ndata: 12345\n")


STREAM = (b'retry: 10\r\nid: s-0\r\n\r\n:\r\n\r\nid: s-1\ndata: {"a":\ndata: 1}\n\n'
          b'event: gap\rid: s-9\rdata: {}\r\r\xef\xbb\xbf: not a bom here\n\ndata: \xc3\xa9\n\n')


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_chunking_never_changes_the_result(cuts: list[int]) -> None:
    expected = parse(STREAM)
    parser = SseParser()
    items: list[object] = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        items.extend(parser.feed(STREAM[start:end]))
    assert items == expected
    assert expected[-1] == Event("message", "é", "s-9")
