"""Long polling: a request the server holds until there is something new.

The first request asks ``wait=0`` so that a working long poll is known (and
the starting position learnt) at once; the following ones wait
``longpoll_wait`` seconds. Messages published between two requests are in the
log and come with the next answer.
"""

from __future__ import annotations

import httpx

from tidings.client._session import Session

#: Seconds a long-poll answer may take beyond the wait before it counts as lost.
ANSWER_MARGIN = 10.0


async def read(session: Session) -> None:
    """Long-poll until the session must end (it raises) or upgrade (it returns)."""
    client = session.client
    url, channels = session.read_target()
    wait = 0.0
    while True:
        since = session.book.since()
        params = channels.add("wait", f"{wait:g}")
        if since is not None:
            params = params.add("since", since)
        params = session.read_params(params, poller=True)
        timeout = httpx.Timeout(client.connect_timeout, read=wait + ANSWER_MARGIN)
        response = await client._http.get(url, params=params, timeout=timeout)
        session.check(response)
        session.learn_client(response)
        body = response.json()
        await session.established()
        more = await session.batch(body)
        if session.upgrade_due():
            return
        wait = 0.0 if more else client.longpoll_wait
