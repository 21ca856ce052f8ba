"""Take the demo's screenshots for the docs: ``python tests/demo/screenshots.py [SECONDS]``.

Starts the demo on a free port, opens ``/`` and ``/lab`` in headless Chromium
(Debian's ``chromium``), lets them collect for SECONDS (default 90) so the
charts have history, and writes ``docs/screenshot-demo.png`` and
``docs/screenshot-lab.png``. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from playwright.async_api import async_playwright

from tidings.demo import start_demo
from tidings.demo.feed import Market
from tidings.settings import Settings

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"
SHOTS = {"/": "screenshot-demo.png", "/lab": "screenshot-lab.png"}


async def main(seconds: float) -> None:
    demo = await start_demo(Settings(host="127.0.0.1", port=0), rate=5, market=Market(seed=2024))
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--disable-gpu", "--disable-dev-shm-usage"])
            pages = {}
            for path in SHOTS:
                # a context each, so that neither page is a background tab
                context = await browser.new_context(viewport={"width": 1400, "height": 760})
                pages[path] = page = await context.new_page()
                await page.goto(demo.url + path)
            if "/" in pages:
                await pages["/"].click("#prices tr[data-symbol='NVDA']")
            await asyncio.sleep(seconds)
            for path, name in SHOTS.items():
                await pages[path].screenshot(path=DOCS / name, full_page=True)
                print(f"wrote {DOCS / name}")
            await browser.close()
    finally:
        await demo.aclose()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 90.0))
