"""The demo and lab pages read with deltas, and the lab shows bytes per message with and without."""

from __future__ import annotations

from typing import Any

from test_demo_browser import TECHNIQUES, demo, expected_errors, page

from tidings.demo import Demo

__all__ = ["demo", "expected_errors", "page"]  # fixtures


async def test_the_lab_shows_bytes_per_message_with_and_without_deltas(
        demo: Demo, page: Any) -> None:
    await page.goto(demo.url + "/lab")
    await page.wait_for_function(
        "document.querySelectorAll('#columns [data-technique]').length === 4")
    figures = {}
    for technique in TECHNIQUES:
        column = f"#columns [data-technique='{technique}']"
        for field in ("per-message", "per-message-plain"):
            await page.wait_for_function(
                f"document.querySelector(\"{column} .{field}\").textContent.endsWith(' B')")
        # a stream's deltas show after a few messages: wait for ten
        count = f"document.querySelector(\"{column} .count\").textContent"
        await page.wait_for_function(f"Number({count}.replace(/,/g, '')) >= 10")
        figures[technique] = [int((await page.text_content(f"{column} .{field}") or "")[:-2])
                              for field in ("per-message", "per-message-plain")]
    # Each figure shows once per column (no second row of the same figure left empty).
    fields = await page.evaluate(
        "[...document.querySelectorAll('#columns [data-technique] .figures dd')]"
        ".map((dd) => dd.className)")
    assert len(fields) == len(set(fields)) * 4, fields
    options = await page.evaluate(
        "window.tidingsLab.columns.map(c => [c.client.options.delta, c.plain.options.delta])")
    assert options == [[True, False]] * 4
    for technique in ("websocket", "sse"):
        with_deltas, without = figures[technique]
        assert with_deltas < without / 2, (technique, figures)


async def test_the_prices_page_reads_with_deltas(demo: Demo, page: Any) -> None:
    await page.goto(demo.url + "/")
    await page.wait_for_function("document.querySelectorAll('#prices tbody tr').length === 20")
    await page.wait_for_function("Number(document.getElementById('messages').textContent) >= 5")
