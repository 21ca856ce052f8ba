"""Client ids the server draws for readers that name none (server/presence.py)."""

from __future__ import annotations

import multiprocessing

from tidings.core.presence import check_client_id
from tidings.server import presence
from tidings.server.presence import CLIENT_IDS_PER_DRAW, new_client_id, new_client_id_ascii


def test_ids_are_valid_and_distinct_across_draws() -> None:
    ids = [new_client_id() for _ in range(3 * CLIENT_IDS_PER_DRAW + 7)]
    assert len(set(ids)) == len(ids)
    assert all(check_client_id(client) == client and len(client) == 16 for client in ids)


def test_ids_in_ascii_are_valid_and_distinct_across_draws() -> None:
    """The ids joined into kept answers (pollers that chose none), drawn in their own pool."""
    ids = [new_client_id_ascii().decode("ascii") for _ in range(3 * CLIENT_IDS_PER_DRAW + 7)]
    ids += [new_client_id() for _ in range(CLIENT_IDS_PER_DRAW)]
    assert len(set(ids)) == len(ids)
    assert all(check_client_id(client) == client and len(client) == 16 for client in ids)


def _draw_in_child(queue: multiprocessing.Queue[str]) -> None:
    queue.put(new_client_id())


def _ascii_in_child(queue: multiprocessing.Queue[bytes]) -> None:
    queue.put(new_client_id_ascii())


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


def test_a_forked_worker_does_not_reuse_its_parents_ids_in_ascii() -> None:
    new_client_id_ascii()
    pending = set(presence._drawn_ascii)
    assert pending
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[bytes] = context.Queue()
    child = context.Process(target=_ascii_in_child, args=(queue,))
    child.start()
    try:
        drawn = queue.get(timeout=30)
    finally:
        child.join(30)
    assert drawn not in pending
    assert check_client_id(drawn.decode("ascii"))
