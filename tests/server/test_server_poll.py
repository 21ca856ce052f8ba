"""Publishing and regular polling over real sockets, with httpx."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import SAMPLE_VALUES
from tidings import Server
from tidings.testing import epoch_of, http_client, poll, publish, publish_many, seq_of


async def test_publish_answers_201_with_the_new_id(server: Server) -> None:
    async with http_client(server) as client:
        response = await client.post("/channels/prices", json={"AAPL": 187.2})
        assert response.status_code == 201
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["channel"] == "prices"
        assert seq_of(body["id"]) == 1
        second = await publish(client, "prices", 2)
        assert epoch_of(second) == epoch_of(body["id"])
        assert seq_of(second) == 2


async def test_published_values_arrive_unchanged(server: Server) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "values", SAMPLE_VALUES)
        answer = await poll(client, "/channels/values", since="0")
    assert [m["id"] for m in answer["messages"]] == ids
    assert [m["data"] for m in answer["messages"]] == SAMPLE_VALUES
    for message in answer["messages"]:
        assert message["channel"] == "values"
        assert isinstance(message["time"], int)


async def test_without_since_a_poll_starts_at_the_end(server: Server) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "c", ["old", "older"])
        answer = await poll(client, "/channels/c")
        assert answer == {"messages": [], "next": ids[-1]}
        new = await publish(client, "c", "new")
        answer = await poll(client, "/channels/c", since=answer["next"])
        assert [m["id"] for m in answer["messages"]] == [new]
        assert answer["next"] == new


async def test_since_0_starts_at_the_oldest_retained_message(make_server) -> None:
    server = await make_server(history_size=3)
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(5)))
        answer = await poll(client, "/channels/c", since="0")
    assert [m["id"] for m in answer["messages"]] == ids[2:]
    assert [m["data"] for m in answer["messages"]] == [2, 3, 4]
    assert "gap" not in answer
    assert answer["next"] == ids[-1]


async def test_since_0_on_an_empty_channel(server: Server) -> None:
    async with http_client(server) as client:
        answer = await poll(client, "/channels/empty", since="0")
        assert answer["messages"] == []
        assert seq_of(answer["next"]) == 0
        first = await publish(client, "empty", "first")
        assert epoch_of(first) == epoch_of(answer["next"])
        answer = await poll(client, "/channels/empty", since=answer["next"])
        assert [m["id"] for m in answer["messages"]] == [first]


async def test_etag_and_if_none_match_answer_304_until_something_is_new(server: Server) -> None:
    async with http_client(server) as client:
        first = await publish(client, "c", 1)
        response = await client.get("/channels/c", params={"since": first})
        assert response.status_code == 200
        assert response.json() == {"messages": [], "next": first}
        etag = response.headers["etag"]
        assert etag == f'"{first}"'
        assert response.headers["cache-control"] == "no-cache"

        for _ in range(2):
            again = await client.get("/channels/c", params={"since": first},
                                     headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert again.content == b""
            assert again.headers["etag"] == etag

        second = await publish(client, "c", 2)
        changed = await client.get("/channels/c", params={"since": first},
                                   headers={"If-None-Match": etag})
        assert changed.status_code == 200
        assert [m["id"] for m in changed.json()["messages"]] == [second]
        assert changed.headers["etag"] == f'"{second}"'

        # The new ETag matches the new position only.
        fresh = await client.get("/channels/c", params={"since": second},
                                 headers={"If-None-Match": changed.headers["etag"]})
        assert fresh.status_code == 304
        stale = await client.get("/channels/c", params={"since": second},
                                 headers={"If-None-Match": etag})
        assert stale.status_code == 200

        # The tag validates the answer of its own URL: since=first answers [second] with the
        # tag of second, and a cache holding that answer revalidates it with a 304 (issue 12).
        cached = await client.get("/channels/c", params={"since": first},
                                  headers={"If-None-Match": changed.headers["etag"]})
        assert cached.status_code == 304
        assert cached.content == b"" and cached.headers["etag"] == f'"{second}"'
        for listed in (f'"x", W/"{second}"', "*"):
            also = await client.get("/channels/c", params={"since": first},
                                    headers={"If-None-Match": listed})
            assert also.status_code == 304
        # Any other tag gets the body: a tag names the end of the answer, not where it starts.
        behind = await client.get("/channels/c", params={"since": "0"},
                                  headers={"If-None-Match": etag})
        assert behind.status_code == 200
        assert [m["id"] for m in behind.json()["messages"]] == [first, second]


async def test_limit_and_more_page_through_everything_exactly_once(server: Server) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "c", [{"n": n} for n in range(23)])
        seen: list[str] = []
        cursor = "0"
        pages = 0
        while True:
            answer = await poll(client, "/channels/c", since=cursor, limit=5)
            pages += 1
            assert len(answer["messages"]) <= 5
            seen.extend(m["id"] for m in answer["messages"])
            if answer["messages"]:
                assert answer["next"] == answer["messages"][-1]["id"]
            cursor = answer["next"]
            if not answer.get("more"):
                break
            assert answer["more"] is True
        assert seen == ids
        assert pages == 5
        # Nothing is left after the last page.
        assert (await poll(client, "/channels/c", since=cursor))["messages"] == []


async def test_the_default_limit_pages_too(make_server) -> None:
    server = await make_server(poll_limit=4)
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(6)))
        first = await poll(client, "/channels/c", since="0")
        assert [m["id"] for m in first["messages"]] == ids[:4]
        assert first["more"] is True
        rest = await poll(client, "/channels/c", since=first["next"])
        assert [m["id"] for m in rest["messages"]] == ids[4:]
        assert "more" not in rest


async def test_channels_are_independent(server: Server) -> None:
    async with http_client(server) as client:
        a = await publish(client, "a", "for a")
        b = await publish(client, "b", "for b")
        assert seq_of(a) == seq_of(b) == 1
        assert epoch_of(a) != epoch_of(b)
        answer = await poll(client, "/channels/a", since="0")
        assert [m["data"] for m in answer["messages"]] == ["for a"]


async def test_multi_channel_poll_delivers_each_message_once(server: Server) -> None:
    async with http_client(server) as client:
        a_ids = await publish_many(client, "a", ["a1", "a2"])
        b_ids = await publish_many(client, "b", ["b1"])
        answer = await poll(client, "/subscribe", channel=["a", "b"], since="0")
        got = [(m["channel"], m["id"]) for m in answer["messages"]]
        assert sorted(got) == sorted([("a", i) for i in a_ids] + [("b", i) for i in b_ids])
        assert answer["next"] == f"a={a_ids[-1]},b={b_ids[-1]}"

        # Resume from the multi-channel cursor: only what is new, per channel.
        b2 = await publish(client, "b", "b2")
        a3 = await publish(client, "a", "a3")
        answer = await poll(client, "/subscribe", channel=["a", "b"], since=answer["next"])
        assert sorted(m["id"] for m in answer["messages"]) == sorted([b2, a3])
        assert answer["next"] == f"a={a3},b={b2}"
        assert (await poll(client, "/subscribe", channel=["a", "b"],
                           since=answer["next"]))["messages"] == []


async def test_multi_channel_paging_reads_everything_exactly_once(server: Server) -> None:
    async with http_client(server) as client:
        expected: list[tuple[str, str]] = []
        for n in range(7):
            for channel in ("a", "b", "c")[: 1 + n % 3]:
                expected.append((channel, await publish(client, channel, n)))
        seen: list[tuple[str, str]] = []
        cursor = "0"
        for _ in range(50):
            answer = await poll(client, "/subscribe", channel=["a", "b", "c"], since=cursor,
                                limit=2)
            assert len(answer["messages"]) <= 2
            seen.extend((m["channel"], m["id"]) for m in answer["messages"])
            cursor = answer["next"]
            if not answer.get("more"):
                break
        assert sorted(seen) == sorted(expected)
        assert len(seen) == len(expected)
        for channel in ("a", "b", "c"):
            ids = [i for c, i in seen if c == channel]
            assert ids == sorted(ids, key=seq_of)


async def test_multi_channel_since_without_a_channel_starts_that_channel_at_the_end(
        server: Server) -> None:
    async with http_client(server) as client:
        a1 = await publish(client, "a", "a1")
        await publish(client, "b", "b1 (before the subscription)")
        a2 = await publish(client, "a", "a2")
        answer = await poll(client, "/subscribe", channel=["a", "b"], since=f"a={a1}")
        assert [m["id"] for m in answer["messages"]] == [a2]


async def test_a_read_the_broker_can_answer_at_once_takes_no_callbacks(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Polls and long polls on a broker that holds the log are answered without
    ``when_ready`` (and the two callbacks it takes); a broker that must fetch first still
    goes through it, and its readers are answered the same."""
    waited: list[object] = []
    when_ready = server.when_ready

    def counted(*args: Any) -> bool:
        waited.append(args)
        return when_ready(*args)

    monkeypatch.setattr(server, "when_ready", counted)
    async with http_client(server) as client:
        first = await publish(client, "ready", 1)
        assert (await poll(client, "/channels/ready", since="0"))["next"] == first
        answered = await client.get("/channels/ready", params={"since": "0", "wait": "5"})
        assert answered.json()["next"] == first
        assert waited == []
        ready = server.broker.ready
        monkeypatch.setattr(server.broker, "ready", lambda starts: False)
        # (a broker that is not ready prepares: the memory broker's prepare is at once)
        answer = await poll(client, "/channels/ready", since="0")
        assert [m["data"] for m in answer["messages"]] == [1]
        monkeypatch.setattr(server.broker, "ready", ready)
        assert len(waited) == 1
