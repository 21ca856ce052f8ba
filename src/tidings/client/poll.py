"""Regular polling: ask what is new every ``poll_interval`` seconds.

The cheapest technique to get through anything, and the slowest. Each answer
carries ``ETag: "<next>"``; sending it back as ``If-None-Match`` makes an
answer with nothing new a bodiless ``304``.
"""

from __future__ import annotations

import asyncio

from tidings.client._session import Session


async def read(session: Session) -> None:
    """Poll until the session must end (it raises) or upgrade (it returns)."""
    client = session.client
    url, channels = session.read_target()
    etag: str | None = None
    while True:
        since = session.book.since()
        params = channels.add("since", since) if since is not None else channels
        params = session.read_params(params, poller=True)
        headers = {"If-None-Match": etag} if etag is not None else {}
        response = await client._http.get(url, params=params, headers=headers)
        session.learn_client(response)
        more = False
        if response.status_code == 304:
            await session.established()
        else:
            session.check(response)
            body = response.json()
            await session.established()
            more = await session.batch(body)
            # No ETag on answers with a gap: the next answer differs anyway.
            etag = response.headers.get("etag")
        if session.upgrade_due():
            return
        if not more:
            await asyncio.sleep(client.poll_interval)
