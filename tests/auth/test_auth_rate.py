"""The publish rate is counted per publisher: a token's subject, the API key, else the address."""

from __future__ import annotations

from authkit import API_KEY, AUTH, bearer, token

from conftest import ServerFactory
from tidings.testing import http_client


async def test_each_token_subject_and_the_api_key_have_their_own_bucket(
        make_server: ServerFactory) -> None:
    server = await make_server(auth=AUTH, max_publish_rate=0.001, publish_burst=2)
    alice = bearer(token(publish=["chat:*"], sub="alice"))
    bob = bearer(token(publish=["chat:*"], sub="bob"))
    async with http_client(server) as http:
        async def publish(headers: dict[str, str], channel: str) -> int:
            response = await http.post(f"/channels/{channel}", json=1, headers=headers)
            return response.status_code

        # All from 127.0.0.1: only the identities tell the buckets apart.
        assert [await publish(alice, "chat:a") for _ in range(3)] == [201, 201, 429]
        assert [await publish(bob, "chat:a") for _ in range(3)] == [201, 201, 429]
        assert [await publish(bearer(API_KEY), "public:x") for _ in range(3)] == [201, 201, 429]
        # Anonymous publishers share the address's bucket.
        assert [await publish({}, "open:x") for _ in range(3)] == [201, 201, 429]


async def test_the_sync_publisher_sends_its_token(make_server: ServerFactory) -> None:
    import asyncio

    import tidings
    from tidings.errors import RequestRefused

    server = await make_server(auth=AUTH)

    def publish(token_: str | None) -> str:
        with tidings.Publisher(server.url, token=token_) as publisher:
            return publisher.publish("public:news", {"a": 1})

    assert (await asyncio.to_thread(publish, API_KEY)).endswith("-1")
    try:
        await asyncio.to_thread(publish, None)
    except RequestRefused as exc:
        assert exc.status == 401
    else:
        raise AssertionError("published without the API key")
