"""tidings.js with ``delta: true`` in headless Chromium: whole messages for the page.

The server sends deltas (counted on the server, which runs in this process);
the page's ``onMessage`` gets the published values, on every technique, with
a connection of its own and shared between tabs. ``applyDelta`` is checked
against the server's ``diff`` on random JSON values.
"""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
from browserkit import browser, page, serving
from test_browser_client import TECHNIQUES, open_client, wait_for

from conftest import UNIT
from tidings.demo.feed import Market
from tidings.wire import delta

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures


@pytest.fixture
def diffs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each delta the server computes."""
    calls: list[int] = []
    diff = delta.diff

    def counting(old: Any, new: Any) -> Any:
        calls.append(1)
        return diff(old, new)

    monkeypatch.setattr(delta, "diff", counting)
    return calls


@pytest.mark.parametrize("share", [False, "auto"])
@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_the_page_gets_whole_messages_from_deltas(
        page: Any, technique: str, share: bool | str, diffs: list[int]) -> None:
    market = Market(seed=11)
    values = [market.tick() for _ in range(8)]
    async with serving() as served, httpx.AsyncClient(base_url=served.url,
                                                      timeout=5 * UNIT) as http:
        for value in values[:4]:
            assert (await http.post("/channels/stocks", json=value)).status_code == 201
        await open_client(page, served, ["stocks"], transports=[technique], delta=True,
                          shareTabs=share)
        await wait_for(page, "window.log.messages.length === 4")
        for value in values[4:]:
            assert (await http.post("/channels/stocks", json=value)).status_code == 201
        await wait_for(page, "window.log.messages.length === 8")
        got = await page.evaluate("window.log.messages.map((m) => m.data)")
        errors = await page.evaluate("window.log.errors")
    assert got == json.loads(json.dumps(values))
    assert errors == []
    assert diffs  # the server did send deltas


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-1000, 1000)
    if kind == 2:
        return round(rng.uniform(-100, 100), 2)
    if kind == 3:
        return rng.choice(["", "a", "b", "é", "__proto__"])
    if kind < 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(["a", "b", "c", "0", "len", "__proto__"]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(5))}


def mutate(rng: random.Random, value: Any) -> Any:
    if isinstance(value, dict) and value and rng.random() < 0.8:
        changed = dict(value)
        key = rng.choice(list(changed))
        if rng.random() < 0.2:
            del changed[key]
        else:
            changed[key] = mutate(rng, changed[key])
        return changed
    if isinstance(value, list) and value and rng.random() < 0.8:
        changed = list(value)
        index = rng.randrange(len(changed))
        changed[index] = mutate(rng, changed[index])
        if rng.random() < 0.3:
            changed.append(random_value(rng))
        return changed
    return random_value(rng)


async def test_apply_delta_in_the_browser_undoes_the_servers_diff(page: Any) -> None:
    rng = random.Random(18)
    pairs = []
    for _ in range(300):
        old = random_value(rng)
        new = mutate(rng, old) if rng.random() < 0.7 else random_value(rng)
        pairs.append([old, delta.diff(old, new), new])
    async with serving() as served:
        await page.goto(f"{served.url}/test/client?channels=x")
        await wait_for(page, "window.client !== undefined")
        # As JSON text: JSON.parse keeps a "__proto__" key as a key, as a server's message would.
        results = await page.evaluate("""async (text) => {
            const { applyDelta } = await import("/tidings.js");
            return JSON.parse(text).map(([old, patch]) => JSON.stringify(applyDelta(old, patch)));
        }""", json.dumps(pairs))
    for (_old, _patch, new), result in zip(pairs, results, strict=True):
        assert json.loads(result) == new
