"""Bytes per WebSocket message frame on the demo's price feed, plain and compressed, and the
CPU time of compressing one (done once per message, whatever the number of subscribers).

Builds ``--messages`` ticks of the demo market (``tidings.demo.feed``, a fixed seed)
as the server does, then their message frames: plain (``wire/websocket.py``) and
compressed (``wire/deflate.py``, permessage-deflate without context takeover,
window 15, the default threshold). Prints the mean frame size of each and the
process CPU time per compression. Example::

    .venv/bin/python benchmarks/ws_compression.py --messages 5000
"""

from __future__ import annotations

import argparse
import statistics
import time

from tidings.core.cursor import Position
from tidings.core.message import Message
from tidings.demo.feed import Market
from tidings.settings import Settings
from tidings.wire import deflate, jsonvalue
from tidings.wire.websocket import message_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    market = Market(seed=1)
    messages = [Message("demo:prices", Position("k2j4h5g6", n + 1),
                        jsonvalue.encode(market.tick()), 1_795_809_605_201 + n)
                for n in range(args.messages)]
    plain = [len(message_frame(m)) for m in messages]
    encoder = deflate.frames(deflate.MAX_WINDOW_BITS, Settings().websocket_compression_threshold)
    started = time.process_time()
    compressed = [len(encoder.single(m)) for m in messages]
    cpu = time.process_time() - started
    print(f"demo feed, {args.messages} messages: plain frame {statistics.mean(plain):.0f} B, "
          f"compressed frame {statistics.mean(compressed):.0f} B "
          f"({100 * statistics.mean(compressed) / statistics.mean(plain):.0f} %), "
          f"compressing once: {1e6 * cpu / args.messages:.1f} us CPU per message")


if __name__ == "__main__":
    main()
