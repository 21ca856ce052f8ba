"""Coverage-guided fuzzing (atheris) of every parser that reads what a client sends.

Each input is fed to: the WebSocket frame parser (in chunks), the command
parser, the cursor and channel-name parsers, the JSON body check, and the
request-target parser. Each must either return or raise its documented error
(the ones the server turns into a 400 answer or a close code); anything else
is a crash that atheris reports with the input that caused it.

    .venv/bin/python fuzz/fuzz_parsers.py -runs=200000        # a longer run
    .venv/bin/python fuzz/fuzz_parsers.py -max_total_time=600 # ten minutes

CI runs a short version (tests/hostile/test_hostile_atheris.py).
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from tidings.core.cursor import parse_since
    from tidings.core.names import check_channel
    from tidings.errors import ProtocolError
    from tidings.server.request import Request
    from tidings.wire import commands, jsonvalue
    from tidings.wire.websocket import FrameError, FrameParser


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    split = fdp.ConsumeIntInRange(0, len(data))
    raw = fdp.ConsumeBytes(len(data))

    parser = FrameParser(max_size=4096)
    try:
        parser.feed(raw[:split])
        parser.feed(raw[split:])
    except FrameError as exc:
        assert 1000 <= exc.close_code <= 4999, exc.close_code

    text = raw.decode("utf-8", "replace")
    try:
        commands.parse(text)
    except commands.CommandError as exc:
        assert isinstance(exc.error, ProtocolError)

    for parse in (lambda: parse_since(text, ["a", "b"]), lambda: parse_since(text, ["a"]),
                  lambda: check_channel(text), lambda: jsonvalue.compact(raw),
                  lambda: Request("GET", raw, {})):
        with contextlib.suppress(ProtocolError):
            parse()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
