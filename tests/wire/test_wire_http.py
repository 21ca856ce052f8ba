"""HTTP responses as bytes (wire/http.py)."""

from __future__ import annotations

from tidings.wire import http

JSON_NO_CACHE = (http.JSON, ("Cache-Control", "no-cache"))


def test_a_response_has_its_lead_after_the_status_line_and_a_content_length() -> None:
    answer = http.response(200, JSON_NO_CACHE, b'{"a":1}', lead=b"Tidings-Client: x\r\n")
    assert answer == (b"HTTP/1.1 200 OK\r\nTidings-Client: x\r\n"
                      b"Content-Type: application/json\r\nCache-Control: no-cache\r\n"
                      b"Content-Length: 7\r\n\r\n{\"a\":1}")
    closing = http.response(304, (("ETag", '"1"'),), keep_alive=False)
    assert closing == b'HTTP/1.1 304 Not Modified\r\nETag: "1"\r\nConnection: close\r\n\r\n'


def test_waiters_of_one_message_share_its_head_and_body() -> None:
    """Answers built one after the other for one body (the waiters a message wakes) differ
    only by their lead, and only the first looks its head up."""
    body = b'{"messages":[{"id":"e-1"}],"next":"e-1"}'
    first = http.response(200, JSON_NO_CACHE, body, lead=b"Tidings-Client: a\r\n")
    lookups = http._cached_fields.cache_info()
    answers = [http.response(200, JSON_NO_CACHE, body, lead=b"Tidings-Client: %d\r\n" % n)
               for n in range(100)]
    after = http._cached_fields.cache_info()
    assert (after.hits, after.misses) == (lookups.hits, lookups.misses)
    tail = first[first.index(b"Content-Type"):]
    assert all(answer == b"HTTP/1.1 200 OK\r\nTidings-Client: %d\r\n%s" % (n, tail)
               for n, answer in enumerate(answers))


def test_an_answer_differing_in_anything_but_its_lead_is_built_anew() -> None:
    body = b'{"messages":[],"next":"e-2"}'
    base = http.response(200, JSON_NO_CACHE, body)
    assert http.response(200, JSON_NO_CACHE, body, keep_alive=False).endswith(
        b"Connection: close\r\n\r\n" + body)
    other = (*JSON_NO_CACHE, ("Vary", "Origin"))
    assert b"Vary: Origin\r\n" in http.response(200, other, body)
    assert http.response(200, JSON_NO_CACHE, bytes(body)) == base  # an equal body, new object
    assert http.response(200, JSON_NO_CACHE, body + b" ").count(b"Content-Length: 29") == 1
    assert http.response(404, JSON_NO_CACHE, body).startswith(b"HTTP/1.1 404 Not Found\r\n")


def test_headers_given_as_a_list_and_changed_later_do_not_change_the_next_answer() -> None:
    body = b"{}"
    headers = [http.JSON]
    first = http.response(200, headers, body)
    headers.append(("X-Later", "1"))
    assert http.response(200, [http.JSON], body) == first
    assert b"X-Later: 1\r\n" in http.response(200, headers, body)
