"""What N tabs of one browser cost, with tidings.js sharing one connection or not.

Starts ``python -m tidings serve`` pinned to CPU 0 and headless Chromium
(Debian's ``/usr/bin/chromium``, driven by Playwright) with ``--tabs`` pages of
one origin. Each page makes ``connect(origin, {shareTabs: MODE})`` and counts
the messages of one channel. For each mode (``off``: a connection per tab;
``worker``: a SharedWorker holds one; ``leader``: a leader tab holds one over a
BroadcastChannel) it publishes ``--messages`` messages at ``--rate`` per second
and prints, once every tab has counted every message:

* ``streams``: connections the server holds for the tabs (from ``/healthz``);
* ``server µs/msg``: server CPU (utime + stime from /proc) per published message;
* ``browser µs/msg``: CPU of Chromium's processes and Playwright's driver (every
  process descended from this one but the server) per published message.

Example::

    .venv/bin/python benchmarks/browser_tabs.py --tabs 6 --messages 500 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loadgen import CLK_TCK, ServerProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-renderer-backgrounding",
        "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"]
MODES = ["off", "worker", "leader"]

OPEN_TAB = """async (mode) => {
  const { connect } = await import("/tidings.js");
  window.count = 0;
  window.client = connect(location.origin, { shareTabs: mode === "off" ? false : mode });
  window.client.subscribe("bench", { onMessage: () => { window.count += 1; } });
}"""


def descendants_cpu_seconds(root: int, exclude: int) -> float:
    """utime + stime of every living process descended from ``root``, but ``exclude``'s tree."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, stack = 0.0, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid == exclude:
            continue
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


async def measure(mode: str, tabs: int, messages: int, rate: float) -> dict[str, object]:
    from playwright.async_api import async_playwright

    server = ServerProcess.start(cpu=0)
    try:
        async with async_playwright() as playwright, httpx.AsyncClient(
                base_url=server.url, timeout=30) as http:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                       args=ARGS)
            context = await browser.new_context()
            pages = []
            for _ in range(tabs):
                page = await context.new_page()
                await page.goto(f"{server.url}/healthz")
                await page.evaluate(OPEN_TAB, mode)
                pages.append(page)
            for page in pages:
                await page.wait_for_function("() => window.client.state === 'open'",
                                             timeout=30_000)
            streams = (await http.get("/healthz")).json()["connections"]["streams"]
            me = os.getpid()
            server_before = server.cpu_seconds()
            browser_before = descendants_cpu_seconds(me, server.process.pid)
            started = time.monotonic()
            for n in range(messages):
                response = await http.post("/channels/bench", json={"n": n, "pad": "x" * 64})
                assert response.status_code == 201, response.text
                await asyncio.sleep(max(0.0, started + (n + 1) / rate - time.monotonic()))
            for page in pages:
                await page.wait_for_function(f"() => window.count >= {messages}",
                                             timeout=60_000)
            server_cpu = server.cpu_seconds() - server_before
            browser_cpu = descendants_cpu_seconds(me, server.process.pid) - browser_before
            counts = [await page.evaluate("window.count") for page in pages]
            await browser.close()
    finally:
        server.stop()
    return {"mode": mode, "tabs": tabs, "messages": messages, "streams": streams,
            "server_us_per_message": round(server_cpu / messages * 1e6, 1),
            "browser_us_per_message": round(browser_cpu / messages * 1e6, 1),
            "every_tab_got_every_message": all(count == messages for count in counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tabs", type=int, default=6)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100, help="messages per second")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    rows = [asyncio.run(measure(mode, options.tabs, options.messages, options.rate))
            for mode in options.modes]
    if options.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{options.tabs} tabs, {options.messages} messages at {options.rate:g}/s")
    print(f"{'mode':8} {'streams':>7} {'server µs/msg':>14} {'browser µs/msg':>15}  all delivered")
    for row in rows:
        print(f"{row['mode']:8} {row['streams']:>7} {row['server_us_per_message']:>14} "
              f"{row['browser_us_per_message']:>15}  {row['every_tab_got_every_message']}")


if __name__ == "__main__":
    main()
