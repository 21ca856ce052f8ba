"""Client ids the server draws for readers that name none (server/presence.py)."""

from __future__ import annotations

import multiprocessing

from tidings.core.presence import check_client_id
from tidings.server import presence
from tidings.server.presence import CLIENT_IDS_PER_DRAW, new_client_id


def test_ids_are_valid_and_distinct_across_draws() -> None:
    ids = [new_client_id() for _ in range(3 * CLIENT_IDS_PER_DRAW + 7)]
    assert len(set(ids)) == len(ids)
    assert all(check_client_id(client) == client and len(client) == 16 for client in ids)


def _draw_in_child(queue: multiprocessing.Queue[str]) -> None:
    queue.put(new_client_id())


def test_a_forked_worker_does_not_reuse_its_parents_ids() -> None:
    new_client_id()  # the parent holds a drawn pool now
    pending = set(presence._drawn)
    assert pending
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_draw_in_child, args=(queue,))
    child.start()
    try:
        drawn = queue.get(timeout=30)
    finally:
        child.join(30)
    assert drawn not in pending
    assert check_client_id(drawn) == drawn
