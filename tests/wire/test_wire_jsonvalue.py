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


@pytest.mark.parametrize("text", [b"1e400", b"-1e400", b"[1e999]", b'{"a":1e400}', b"1E400",
                                  b"1.5e+309", b"-0.1e310", b"[1,{\"b\":[2e308]}]",
                                  b"1" + b"0" * 400 + b".0"])
def test_numbers_that_overflow_are_refused(text: bytes) -> None:
    with pytest.raises(BadRequest, match="out of range") as info:
        jsonvalue.compact(text)
    assert info.value.code == "invalid_json"
    assert info.value.status == 400


@pytest.mark.parametrize("text", [b"1e-400", b"-1e-999", b"1.7976931348623157e308",
                                  b"-1.7976931348623157e308", b"4.9e-324"])
def test_numbers_at_the_edges_of_the_range_are_kept(text: bytes) -> None:
    value = jsonvalue.decode(text)
    assert math.isfinite(value)
    assert jsonvalue.decode(jsonvalue.compact(text)) == value


@given(st.integers(min_value=309, max_value=100_000), st.booleans(),
       st.sampled_from(["{}", "[{}]", '{{"a":{}}}', "[1,{}]"]))
def test_any_exponent_that_overflows_is_refused(exponent: int, negative: bool,
                                                shape: str) -> None:
    number = f"{'-' if negative else ''}9.9e{exponent}"
    with pytest.raises(BadRequest) as info:
        jsonvalue.decode(shape.format(number).encode())
    assert info.value.code == "invalid_json"


def test_integers_longer_than_the_limit_are_refused_both_ways() -> None:
    longest = "9" * jsonvalue.MAX_INT_DIGITS
    assert jsonvalue.decode(longest) == int(longest)
    assert jsonvalue.decode("-" + longest) == -int(longest)
    assert jsonvalue.compact(longest.encode()) == longest.encode()
    for text in ("9" * 4400, "-" + "9" * 4400, "[" + "1" * 4301 + "]",
                 '{"a":' + "1" * (jsonvalue.MAX_INT_DIGITS + 1) + "}"):
        with pytest.raises(BadRequest, match="digits") as info:
            jsonvalue.decode(text)
        assert info.value.code == "invalid_json"
    for value in (10**4400, -(10**4400), [10**4400], {"a": 10**4400}):
        with pytest.raises(BadRequest) as info:
            jsonvalue.encode(value)
        assert info.value.code == "invalid_json"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [-math.inf], {"a": math.nan},
                                   {"a": [1, {"b": math.inf}]}])
def test_non_finite_numbers_are_not_encoded(value: object) -> None:
    with pytest.raises(BadRequest) as info:
        jsonvalue.encode(value)
    assert info.value.code == "invalid_json"


edge_numbers = st.sampled_from(["1e400", "-1e400", "1e999", "2e308", "-0", "0.0", "1e-400",
                                "1.7976931348623157e308", "9" * 4301, "9" * 4300, "NaN",
                                "Infinity", "-Infinity", "1" + "0" * 400])


@given(st.recursive(edge_numbers, lambda children: st.lists(children, max_size=3).map(
    lambda items: "[" + ",".join(items) + "]") | st.dictionaries(
    st.text(max_size=3), children, max_size=3).map(
    lambda pairs: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs.items()) + "}"),
    max_leaves=8))
def test_compact_returns_json_or_raises_bad_request(text: str) -> None:
    """Whatever number a body holds, the answer is a value or ``invalid_json``, never
    another exception (which would escape to the server)."""
    try:
        encoded = jsonvalue.compact(text.encode())
    except BadRequest as exc:
        assert exc.code == "invalid_json"
    else:
        assert json.loads(encoded) == jsonvalue.decode(text)


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
