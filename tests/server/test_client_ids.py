"""Client ids the server draws for readers that name none (server/presence.py)."""

from __future__ import annotations

import multiprocessing
import re

from tidings.core.presence import check_client_id
from tidings.server import poll, presence
from tidings.server.poll import fresh_client_line
from tidings.server.presence import CLIENT_IDS_PER_DRAW, new_client_id


def test_ids_are_valid_and_distinct_across_draws() -> None:
    ids = [new_client_id() for _ in range(3 * CLIENT_IDS_PER_DRAW + 7)]
    assert len(set(ids)) == len(ids)
    assert all(check_client_id(client) == client and len(client) == 16 for client in ids)


def test_fresh_client_lines_name_valid_and_distinct_ids() -> None:
    """The ``Tidings-Client`` lines of pollers that chose no id, made a draw at a time."""
    lines = [fresh_client_line() for _ in range(3 * CLIENT_IDS_PER_DRAW + 7)]
    ids = []
    for line in lines:
        found = re.fullmatch(rb"Tidings-Client: (.*)\r\n", line)
        assert found is not None, line
        ids.append(found[1].decode("ascii"))
    assert len(set(ids)) == len(ids)
    assert all(check_client_id(client) == client and len(client) == 16 for client in ids)


def _draw_in_child(queue: multiprocessing.Queue[str]) -> None:
    queue.put(new_client_id())


def _line_in_child(queue: multiprocessing.Queue[bytes]) -> None:
    queue.put(fresh_client_line())


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


def test_a_forked_worker_does_not_reuse_its_parents_client_lines() -> None:
    fresh_client_line()
    pending = set(poll._fresh_lines)
    assert pending
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[bytes] = context.Queue()
    child = context.Process(target=_line_in_child, args=(queue,))
    child.start()
    try:
        drawn = queue.get(timeout=30)
    finally:
        child.join(30)
    assert drawn not in pending
    assert drawn.startswith(b"Tidings-Client: ")
