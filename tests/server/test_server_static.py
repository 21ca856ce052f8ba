"""Static files: ``/tidings.js``, pages given to the server, and the clock in ``/healthz``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conftest import UNIT
from tidings import Server, Settings, UsageError
from tidings.server.static import STATIC_DIR


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        yield client


async def test_browser_client_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/tidings.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.content == (STATIC_DIR / "tidings.js").read_bytes()
    assert b"export function connect" in response.content
    assert int(response.headers["content-length"]) == len(response.content)


async def test_etag_and_304(client: httpx.AsyncClient) -> None:
    first = await client.get("/tidings.js")
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    again = await client.get("/tidings.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    weak = await client.get("/tidings.js", headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status_code == 304
    stale = await client.get("/tidings.js", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200 and stale.content == first.content


async def test_head_has_the_length_and_no_body(client: httpx.AsyncClient) -> None:
    full = await client.get("/tidings.js")
    head = await client.head("/tidings.js")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(full.content))
    # The connection is still in step: the next request on it is answered.
    assert (await client.get("/tidings.js")).content == full.content


async def test_cors_like_the_rest(client: httpx.AsyncClient) -> None:
    response = await client.get("/tidings.js", headers={"Origin": "http://page.example"})
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_are_405(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/tidings.js")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/tidings.js/", "/tidings", "/static/tidings.js", "/"])
async def test_only_exact_paths(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


async def test_pages_are_added_with_content_types(tmp_path: Path) -> None:
    files = {"/": "index.html", "/style.css": "a.css", "/pic.svg": "p.svg", "/x.png": "x.png",
             "/raw": "data.bin", "/tidings.js": "mine.js"}
    for name in files.values():
        (tmp_path / name).write_bytes(f"content of {name}".encode())
    pages = {path: tmp_path / name for path, name in files.items()}
    async with (
        Server(Settings(port=0), pages=pages) as server,
        httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client,
    ):
        expected = {
            "/": "text/html; charset=utf-8",
            "/style.css": "text/css; charset=utf-8",
            "/pic.svg": "image/svg+xml",
            "/x.png": "image/png",
            "/raw": "application/octet-stream",
            "/tidings.js": "text/javascript; charset=utf-8",
        }
        for path, content_type in expected.items():
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == content_type
            assert response.text == f"content of {files[path]}"  # pages replace built-ins


async def test_files_are_read_once_at_start(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("before")
    async with Server(Settings(port=0), pages={"/page": page}) as server:
        page.write_text("after")
        async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
            assert (await client.get("/page")).text == "before"


@pytest.mark.parametrize("path", ["/channels/x", "/subscribe", "/healthz", "page"])
async def test_pages_cannot_take_protocol_urls(tmp_path: Path, path: str) -> None:
    (tmp_path / "p.html").write_text("x")
    with pytest.raises(UsageError, match="page path"):
        Server(Settings(port=0), pages={path: tmp_path / "p.html"})


async def test_missing_page_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read page /gone"):
        Server(Settings(port=0), pages={"/gone": tmp_path / "nothing.html"})


async def test_healthz_tells_the_time(client: httpx.AsyncClient) -> None:
    before = int(time.time() * 1000)
    body = (await client.get("/healthz")).json()
    after = int(time.time() * 1000)
    assert before <= body["time"] <= after
    assert body["transports"] == ["websocket", "sse", "longpoll", "poll"]


async def test_healthz_lists_the_techniques_served() -> None:
    async with (
        Server(Settings(port=0, transports=("poll", "sse"))) as server,
        httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client,
    ):
        assert (await client.get("/healthz")).json()["transports"] == ["poll", "sse"]


async def test_favicon_is_served_so_a_browser_logs_no_404() -> None:
    async with Server(Settings(port=0)) as server, httpx.AsyncClient() as client:
        response = await client.get(f"{server.url}/favicon.ico", timeout=5 * UNIT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
