"""Published JSON values: strict parsing, compact encoding."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import BadRequest
from tidings.wire import jsonvalue

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_encode_round_trips_and_is_one_line(value: object) -> None:
    encoded = jsonvalue.encode(value)
    assert b"\n" not in encoded and b"\r" not in encoded
    assert json.loads(encoded) == value
    assert jsonvalue.decode(encoded) == value
    assert jsonvalue.compact(encoded) == encoded


@given(json_values)
def test_compact_removes_whitespace(value: object) -> None:
    pretty = json.dumps(value, indent=2, ensure_ascii=True).encode()
    assert jsonvalue.compact(pretty) == jsonvalue.encode(value)


def test_compact_examples() -> None:
    assert jsonvalue.compact(b' { "a" : [ 1 , 2.5 , "x" ] ,\n "b" : null } ') == (
        b'{"a":[1,2.5,"x"],"b":null}')
    assert jsonvalue.compact('"caf\\u00e9 😀"'.encode()) == '"café 😀"'.encode()
    assert jsonvalue.compact(b'"line\\nbreak"') == b'"line\\nbreak"'
    assert jsonvalue.compact(b"42") == b"42"


def test_decode_takes_str_and_bytes() -> None:
    assert jsonvalue.decode('{"a":1}') == {"a": 1}
    assert jsonvalue.decode(b'{"a":1}') == {"a": 1}
    assert jsonvalue.decode(bytearray(b"[1]")) == [1]


@pytest.mark.parametrize("text", [b"NaN", b"Infinity", b"-Infinity", b"[1,NaN]",
                                  b'{"a":Infinity}'])
def test_non_finite_numbers_are_refused(text: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        jsonvalue.decode(text)
    assert info.value.code == "invalid_json"
    assert info.value.status == 400


def test_non_finite_numbers_are_not_encoded() -> None:
    for value in (math.nan, math.inf, [-math.inf]):
        with pytest.raises(ValueError):
            jsonvalue.encode(value)


@pytest.mark.parametrize("body", [b"\xff", b'"\xc3"', b'{"a":"\xed\xa0\x80"}', b"\xfe\xff[]"])
def test_non_utf8_is_refused(body: bytes) -> None:
    with pytest.raises(BadRequest, match="not UTF-8") as info:
        jsonvalue.decode(body, "body")
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [b"", b" ", b"{", b"{'a':1}", b'{"a":1,}', b"[1,]", b"01", b"1 2", b'{"a":1}x', b"undefined",
     b"True", b'"unterminated', b'"\x01"', "\ufeff[]".encode()],
)
def test_invalid_json_is_refused(body: bytes) -> None:
    with pytest.raises(BadRequest, match="command is not valid JSON") as info:
        jsonvalue.decode(body, "command")
    assert info.value.code == "invalid_json"


def test_deep_nesting_is_refused_not_crashed() -> None:
    with pytest.raises(BadRequest) as info:
        jsonvalue.decode(b"[" * 200_000 + b"]" * 200_000)
    assert info.value.code == "invalid_json"


def test_lone_surrogate_is_refused_as_bad_json() -> None:
    # Valid JSON grammar, but no UTF-8 encoding exists for it.
    with pytest.raises(BadRequest) as info:
        jsonvalue.compact(b'{"a":"\\ud800"}')
    assert info.value.code == "invalid_json"


def test_escaped_surrogate_pair_is_fine() -> None:
    assert jsonvalue.compact(b'"\\ud83d\\ude00"') == '"😀"'.encode()
