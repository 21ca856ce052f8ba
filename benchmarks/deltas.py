"""Deltas on the demo's price feed: candidate formats, then what the server and a client pay.

In-process, no sockets (the numbers are bytes and process CPU time, which a
loaded machine disturbs less than rates). Three parts:

1. **Formats**: the mean size of one message of ``--messages`` ticks of the demo
   market (``tidings.demo.feed.Market``, a fixed seed) sent whole, and as a delta
   against the message before it in each candidate format: a JSON merge patch
   (RFC 7386), the tidings patch (``wire/delta.py``), and a fossil-style
   copy/insert delta of the JSON text (what Centrifugo sends; made here with
   ``difflib``, so its CPU figure is difflib's, far slower than fossil's C code:
   only its bytes count). Each also compressed as permessage-deflate would
   (``wire/deflate.py``, no context takeover). CPU per message to make each.
2. **Server**: CPU per delivered message through the readers' real path
   (``Reader.deliver`` into a null socket): ``--readers`` WebSocket readers of one
   channel, plain, compressed, delta, delta compressed. Each message is encoded
   once and written ``--readers`` times; rounds of the four are interleaved.
3. **Client**: CPU per message for the Python client to apply a delta.

Example::

    .venv/bin/python benchmarks/deltas.py --messages 2000 --readers 1000
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from tidings.core.cursor import Position
from tidings.core.message import Message
from tidings.demo.feed import CHANNEL, Market
from tidings.session.reader import Encoder, Reader
from tidings.settings import Settings
from tidings.wire import commands, deflate, delta, jsonvalue

THRESHOLD = Settings().websocket_compression_threshold


def feed(count: int) -> list[Message]:
    market = Market(seed=1)
    return [Message(CHANNEL, Position("k2j4h5g6", n + 1), jsonvalue.encode(market.tick()),
                    1_795_809_605_201 + n) for n in range(count)]


# candidate formats ---------------------------------------------------------------------------


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386: objects merge key by key, anything else (arrays too) is replaced whole."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    patch = {key: merge_patch(old.get(key), value) for key, value in new.items()
             if key not in old or old[key] != value}
    patch.update({key: None for key in old if key not in new})
    return patch


def _b64(number: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
    out = ""
    while True:
        out = digits[number & 63] + out
        number >>= 6
        if not number:
            return out


def text_delta(old: bytes, new: bytes) -> bytes:
    """A fossil-style delta: ``N@O,`` copies N bytes from offset O, ``N:text`` inserts."""
    a, b = old.decode(), new.decode()
    out = [_b64(len(b)), "\n"]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out += [_b64(i2 - i1), "@", _b64(i1), ","]
        elif j2 > j1:
            out += [_b64(j2 - j1), ":", b[j1:j2]]
    return "".join(out).encode()


def envelope(message: Message, base: Message, field: bytes) -> bytes:
    """A WebSocket message frame's payload with ``base`` and ``delta`` in place of ``data``."""
    return b'{"type":"message","channel":"%s","id":"%s","base":"%s","delta":%s,"time":%d}' % (
        message.channel.encode(), message.id.encode(), base.id.encode(), field, message.time)


def formats(messages: list[Message]) -> None:
    values = [jsonvalue.decode(m.data) for m in messages]
    pairs = list(itertools.pairwise(messages))

    def whole(_base: Message, message: Message) -> bytes:
        return b'{"type":"message",' + message.json[1:]

    def merge(base: Message, message: Message) -> bytes:
        old, new = values[base.seq - 1], values[message.seq - 1]
        return envelope(message, base, jsonvalue.encode(merge_patch(old, new)))

    def tidings(base: Message, message: Message) -> bytes:  # what the server does, once
        return b'{"type":"message",' + (delta.delta_json(message, base) or message.json)[1:]

    def fossil(base: Message, message: Message) -> bytes:
        return envelope(message, base,
                        json.dumps(text_delta(base.data, message.data).decode()).encode())

    candidates: list[tuple[str, Callable[[Message, Message], bytes]]] = [
        ("whole message", whole), ("JSON merge patch (RFC 7386)", merge),
        ("tidings patch (wire/delta.py)", tidings),
        ("fossil-style text delta, as a JSON string", fossil)]
    print(f"demo feed, {len(messages)} messages; WebSocket frame payload, mean bytes")
    print("| format | bytes | compressed | CPU to make one (once per message) |")
    print("|---|---:|---:|---:|")
    for name, make in candidates:
        started = time.process_time()
        payloads = [make(base, message) for base, message in pairs]
        cpu = (time.process_time() - started) / len(pairs)
        compressed = [len(deflate.compress(p)) if len(p) >= THRESHOLD else len(p)
                      for p in payloads]
        print(f"| {name} | {statistics.mean(map(len, payloads)):,.0f} | "
              f"{statistics.mean(compressed):,.0f} | {1e6 * cpu:.1f} µs |")


# the server's path -----------------------------------------------------------------------------


class Sink:
    """A socket that takes everything and counts it."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)


class NoLog:
    def read(self, *args: object) -> Any:
        raise AssertionError("live readers do not read the log")

    def read_back(self, *args: object) -> Any:
        raise AssertionError("live readers do not read the log")


def server_round(name: str, count: int, readers: int) -> tuple[float, float]:
    """CPU µs and bytes per delivered message for one setup, on fresh messages."""
    messages = feed(count)  # fresh: nothing encoded yet
    inner: Encoder = commands.FRAMES if "compressed" not in name else deflate.frames(
        deflate.MAX_WINDOW_BITS, THRESHOLD)
    form = delta.frame_form(deflate.MAX_WINDOW_BITS if "compressed" in name else 0, THRESHOLD)
    sink = Sink()
    group = []
    for _ in range(readers):
        encoder: Encoder = delta.Deltas(inner, form) if name.startswith("delta") else inner
        group.append(Reader(NoLog(), encoder, sink))
    started = time.process_time()
    for message in messages:
        for reader in group:
            reader.deliver(message)
    cpu = time.process_time() - started
    delivered = count * readers
    return 1e6 * cpu / delivered, sink.bytes / delivered


def server(count: int, readers: int, rounds: int) -> None:
    setups = ["plain", "compressed", "delta", "delta compressed"]
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    size: dict[str, float] = {}
    for _ in range(rounds):
        for name in setups:
            micros, per = server_round(name, count, readers)
            cpu[name].append(micros)
            size[name] = per
    print(f"\nserver: {readers} WebSocket readers of one channel, {count} messages, "
          f"{rounds} interleaved rounds")
    print("| frames | bytes per delivered | CPU µs per delivered (each round) |")
    print("|---|---:|---:|")
    for name in setups:
        print(f"| {name} | {size[name]:,.0f} | "
              f"{', '.join(f'{c:.2f}' for c in cpu[name])} |")


def client(messages: list[Message]) -> None:
    values = [jsonvalue.decode(m.data) for m in messages]
    patches = [json.loads(jsonvalue.encode(delta.diff(a, b)))
               for a, b in itertools.pairwise(values)]
    started = time.process_time()
    current = values[0]
    for patch in patches:
        current = delta.apply(current, patch)
    cpu = (time.process_time() - started) / len(patches)
    assert current == values[-1]
    started = time.process_time()
    for message in messages:
        json.loads(message.json)
    parse = (time.process_time() - started) / len(messages)
    print(f"\nclient (Python): applying a delta {1e6 * cpu:.1f} µs per message; "
          f"for scale, parsing a whole message {1e6 * parse:.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not 2 <= args.messages <= 100_000 or not 1 <= args.readers <= 10_000:
        parser.error("--messages 2..100000, --readers 1..10000")
    messages = feed(args.messages)
    formats(messages)
    server(min(args.messages, 500), args.readers, args.rounds)
    client(messages)


if __name__ == "__main__":
    main()
