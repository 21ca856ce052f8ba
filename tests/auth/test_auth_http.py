"""Credentials and permissions over HTTP: publish, poll, long poll and SSE refusals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from authkit import API_KEY, AUTH, RULES, SECRET, bearer, publish_ok, refusal, token
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tidings import Server
from tidings.errors import UsageError
from tidings.settings import AuthSettings
from tidings.testing import http_client, post


async def test_without_auth_config_everything_stays_open(server: Server) -> None:
    async with http_client(server) as client:
        # Even credentials that would be refused are not looked at.
        response = await post(client, "chat:x", 1, bearer("not-a-token"))
        assert response.status_code == 201
        response = await client.get("/channels/chat:x", params={"since": "0"},
                                    headers=bearer("garbage"))
        assert response.status_code == 200
        assert [m["data"] for m in response.json()["messages"]] == [1]


async def test_publish_needs_the_api_key_where_the_rule_says_so(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with http_client(server) as client:
        assert refusal(await post(client, "public:x", 1)) == (401, "api_key_required")
        assert refusal(await post(client, "public:x", 1, bearer("wrong-key"))) == (
            401, "invalid_token")
        assert refusal(await post(client, "public:x", 1, {"Authorization": API_KEY})) == (
            401, "invalid_token")  # the Bearer scheme is required
        granted = token(publish=["*"])
        assert refusal(await post(client, "public:x", 1, bearer(granted))) == (
            403, "forbidden")
        # Not in the query string: it would land in access logs.
        response = await client.post("/channels/public:x", params={"token": API_KEY},
                                     content=b"1")
        assert refusal(response) == (401, "invalid_token")
        assert (await post(client, "public:x", 1, bearer(API_KEY))).status_code == 201
        # The safe default for a namespace without a rule: the API key.
        assert refusal(await post(client, "misc:x", 1, bearer(granted))) == (403, "forbidden")
        assert (await post(client, "misc:x", 1, bearer(API_KEY))).status_code == 201
        assert (await post(client, "open:x", 1)).status_code == 201


async def test_publish_with_a_token_that_grants_it(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with http_client(server) as client:
        assert refusal(await post(client, "chat:a", 1)) == (401, "token_required")
        assert (await post(client, "chat:a", 1, bearer(token(publish=["chat:a"])))
                ).status_code == 201
        assert (await post(client, "chat:b", 1, bearer(token(publish=["chat:*"])))
                ).status_code == 201
        only_a = bearer(token(subscribe=["chat:*"], publish=["chat:a"]))
        assert refusal(await post(client, "chat:b", 1, only_a)) == (403, "forbidden")
        assert (await post(client, "chat:b", 1, bearer(API_KEY))).status_code == 201


async def test_reading_needs_a_token_that_grants_every_channel(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with http_client(server) as client:
        await publish_ok(client, "chat:a", "hello")
        assert (await client.get("/channels/public:x")).status_code == 200
        response = await client.get("/channels/chat:a", params={"since": "0"})
        assert refusal(response) == (401, "token_required")
        assert refusal(await client.get("/channels/misc:x")) == (401, "token_required")
        granted = token(subscribe=["chat:a"])
        # The three places a token may be: header, query, cookie.
        for request in (
            {"headers": bearer(granted)},
            {"params": {"since": "0", "token": granted}},
            {"headers": {"Cookie": f"theme=dark; tidings_token={granted}"}},
        ):
            params = {"since": "0", **request.get("params", {})}
            response = await client.get("/channels/chat:a", params=params,
                                        headers=request.get("headers"))
            assert response.status_code == 200, (request, response.text)
            assert [m["data"] for m in response.json()["messages"]] == ["hello"]
        response = await client.get("/channels/chat:b", headers=bearer(granted))
        assert refusal(response) == (403, "forbidden")
        # /subscribe: every channel must be granted.
        both = [("channel", "chat:a"), ("channel", "chat:b")]
        response = await client.get("/subscribe", params=both, headers=bearer(granted))
        assert refusal(response) == (403, "forbidden")
        pattern = bearer(token(subscribe=["chat:*"]))
        assert (await client.get("/subscribe", params=both, headers=pattern)).status_code == 200
        # The API key may read anything.
        response = await client.get("/channels/misc:x", headers=bearer(API_KEY))
        assert response.status_code == 200


async def test_sse_and_long_poll_are_refused_before_they_start(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with http_client(server) as client:
        response = await client.get("/channels/chat:a",
                                    headers={"Accept": "text/event-stream"})
        assert refusal(response) == (401, "token_required")
        response = await client.get("/channels/chat:a", params={"wait": "30"},
                                    headers=bearer(token(subscribe=["chat:b"])))
        assert refusal(response) == (403, "forbidden")
        response = await client.get("/channels/chat:a", params={"wait": "30"},
                                    headers=bearer(token(subscribe=["chat:a"], ttl=-10)))
        assert refusal(response) == (401, "token_expired")


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT made by hand: the attacks PyJWT refuses to encode."""
    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()
    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(payload).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(),
                                                 hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def claims(**changes: Any) -> dict[str, Any]:
    return {"sub": "mallory", "exp": time.time() + 60,
            "channels": {"subscribe": ["*"], "publish": ["*"]}, **changes}


@pytest.mark.parametrize(("make_token", "code"), [
    (lambda: token(subscribe=["*"], ttl=-5), "token_expired"),
    (lambda: token(subscribe=["*"], nbf=time.time() + 300), "token_not_yet_valid"),
    (lambda: token(subscribe=["*"], key="another-secret-of-at-least-32-bytes"),
     "invalid_token"),
    (lambda: token(subscribe=["*"], exp=None), "invalid_token"),  # exp is required
    (lambda: forge({"alg": "none", "typ": "JWT"}, claims(), None), "invalid_token"),
    (lambda: forge({"alg": "None", "typ": "JWT"}, claims(), None), "invalid_token"),
    (lambda: forge({"alg": "HS512", "typ": "JWT"}, claims(), SECRET.encode()),
     "invalid_token"),
    (lambda: forge({"alg": "HS256", "typ": "JWT"}, claims(channels=["*"]), SECRET.encode()),
     "invalid_token"),
    (lambda: forge({"alg": "HS256", "typ": "JWT"},
                   claims(channels={"subscribe": "*"}), SECRET.encode()), "invalid_token"),
    (lambda: "not.a.jwt", "invalid_token"),
    (lambda: "x" * 10_000, "invalid_token"),
])
async def test_bad_tokens_are_refused_with_a_reason(make_server: Any, make_token: Any,
                                                    code: str) -> None:
    server = await make_server(auth=AUTH)
    bad = make_token()
    async with http_client(server) as client:
        responses = [await client.get("/channels/chat:a", headers=bearer(bad)),
                     await post(client, "chat:a", 1, bearer(bad))]
        if len(bad) < 4000:  # a longer one is over the URL limit: 400 before any check
            # Even on a channel anyone may read: a bad token is an error the client must see.
            responses.append(await client.get("/channels/public:a", params={"token": bad}))
        for response in responses:
            assert refusal(response) == (401, code)
    # A correctly signed HS256 token passes, so the refusals above are about the token.
    good = forge({"alg": "HS256", "typ": "JWT"}, claims(), SECRET.encode())
    async with http_client(server) as client:
        assert (await client.get("/channels/chat:a", headers=bearer(good))).status_code == 200


def write_public_key(tmp_path: Path, private: Any) -> tuple[Path, bytes]:
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "public.pem"
    path.write_bytes(pem)
    return path, pem


async def test_rs256_and_the_hs256_confusion_attack(make_server: Any, tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path, pem = write_public_key(tmp_path, private)
    server = await make_server(auth=AuthSettings(jwt_public_key_file=str(path), rules=RULES))
    async with http_client(server) as client:
        good = token(subscribe=["chat:*"], key=private, algorithm="RS256")
        assert (await client.get("/channels/chat:a", headers=bearer(good))).status_code == 200
        # The classic attack: HS256 with the (public) PEM as the HMAC secret.
        confused = forge({"alg": "HS256", "typ": "JWT"}, claims(), pem)
        response = await client.get("/channels/chat:a", headers=bearer(confused))
        assert refusal(response) == (401, "invalid_token")
        assert "HS256" in response.json()["message"]
        # RS512 is not configured (RS256 is, by default, for an RSA key).
        rs512 = token(subscribe=["chat:*"], key=private, algorithm="RS512")
        assert refusal(await client.get("/channels/chat:a", headers=bearer(rs512))) == (
            401, "invalid_token")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = token(subscribe=["chat:*"], key=other, algorithm="RS256")
        assert refusal(await client.get("/channels/chat:a", headers=bearer(forged))) == (
            401, "invalid_token")


async def test_es256_keys(make_server: Any, tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    path, pem = write_public_key(tmp_path, private)
    server = await make_server(auth=AuthSettings(jwt_public_key_file=str(path),
                                                 jwt_hs256_secret=SECRET, rules=RULES))
    async with http_client(server) as client:
        good = token(subscribe=["chat:*"], key=private, algorithm="ES256")
        assert (await client.get("/channels/chat:a", headers=bearer(good))).status_code == 200
        # The HS256 secret verifies HS256 tokens only; the EC key never does.
        hs = token(subscribe=["chat:*"])
        assert (await client.get("/channels/chat:a", headers=bearer(hs))).status_code == 200
        confused = forge({"alg": "HS256", "typ": "JWT"}, claims(), pem)
        assert refusal(await client.get("/channels/chat:a", headers=bearer(confused))) == (
            401, "invalid_token")


async def test_keys_that_do_not_fit_are_a_usage_error(make_server: Any, tmp_path: Path) -> None:
    path, _ = write_public_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(UsageError, match="do not fit"):
        await make_server(auth=AuthSettings(jwt_public_key_file=str(path),
                                            jwt_algorithms=("RS256",)))
    with pytest.raises(UsageError, match="cannot read"):
        await make_server(auth=AuthSettings(jwt_public_key_file=str(tmp_path / "missing.pem")))


async def test_the_api_key_from_the_environment(make_server: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_API_KEY", "from-env")
    server = await make_server()
    async with http_client(server) as client:
        assert refusal(await post(client, "x", 1)) == (401, "api_key_required")
        assert (await post(client, "x", 1, bearer("from-env"))).status_code == 201


async def test_tidings_publish_sends_the_api_key_from_the_environment(
        make_server: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from tidings.cli import main

    server = await make_server(auth=AUTH)
    argv = ["publish", "public:cli", '{"a": 1}', "--url", server.url]
    assert await asyncio.to_thread(main, argv) == 1
    assert "api_key_required" in capsys.readouterr().err
    monkeypatch.setenv("TIDINGS_API_KEY", API_KEY)
    assert await asyncio.to_thread(main, argv) == 0
    assert '"channel":"public:cli"' in capsys.readouterr().out.replace(" ", "")
