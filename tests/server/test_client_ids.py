"""Client ids the server draws for readers that name none (server/presence.py)."""

from __future__ import annotations

import multiprocessing

import pytest

from tidings.core.presence import check_client_id
from tidings.server import presence
from tidings.server.presence import CLIENT_IDS_PER_DRAW, new_client_id, new_client_id_ascii


def _as_text(client: str | bytes) -> str:
    return client if isinstance(client, str) else client.decode("ascii")


def test_ids_are_valid_and_distinct_across_draws() -> None:
    """Both pools: ids as text, and in ASCII for the answers joined around them (kept
    answers of pollers that chose none)."""
    ids = [new_client_id() for _ in range(3 * CLIENT_IDS_PER_DRAW + 7)]
    ids += [_as_text(new_client_id_ascii()) for _ in range(3 * CLIENT_IDS_PER_DRAW + 7)]
    assert len(set(ids)) == len(ids)
    assert all(check_client_id(client) == client and len(client) == 16 for client in ids)


def _draw_in_child(in_ascii: bool, queue: multiprocessing.Queue[str]) -> None:
    queue.put(_as_text(new_client_id_ascii() if in_ascii else new_client_id()))


@pytest.mark.parametrize("in_ascii", [False, True], ids=["text", "ascii"])
def test_a_forked_worker_does_not_reuse_its_parents_ids(in_ascii: bool) -> None:
    (new_client_id_ascii if in_ascii else new_client_id)()  # the parent holds a drawn pool now
    pending = {_as_text(client) for client in (presence._drawn_ascii if in_ascii
                                               else presence._drawn)}
    assert pending
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_draw_in_child, args=(in_ascii, queue))
    child.start()
    try:
        drawn = queue.get(timeout=30)
    finally:
        child.join(30)
    assert drawn not in pending
    assert check_client_id(drawn) == drawn
