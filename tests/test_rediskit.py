"""The Redis servers of tests/rediskit.py start, stop, restart empty, pause, and cluster."""

from __future__ import annotations

import socket

import pytest
import redis
from redis.cluster import RedisCluster

from conftest import UNIT
from rediskit import RedisClusterProcesses, RedisProcess, RedisStartError


def test_start_answers_and_stop_closes_the_port(redis_process: RedisProcess) -> None:
    assert redis_process.port != 6379
    assert redis_process.url == f"redis://127.0.0.1:{redis_process.port}/0"
    client = redis.Redis.from_url(redis_process.url, socket_timeout=5 * UNIT)
    with client:
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    directory = redis_process.directory
    assert directory is not None and directory.is_dir()
    redis_process.stop()
    assert not redis_process.running and not directory.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", redis_process.port), timeout=5 * UNIT)


def test_restart_is_an_empty_redis_on_the_same_port(redis_process: RedisProcess) -> None:
    url = redis_process.url
    redis_process.command("SET", "kept", "no")
    assert redis_process.command("GET", "kept") == b"no"
    redis_process.restart()
    assert redis_process.url == url
    assert redis_process.command("GET", "kept") is None
    assert redis_process.command("DBSIZE") == 0


def test_pause_holds_answers_until_resume(redis_process: RedisProcess) -> None:
    redis_process.pause()
    with socket.create_connection(("127.0.0.1", redis_process.port), timeout=5 * UNIT) as sock:
        sock.sendall(b"PING\r\n")
        sock.settimeout(0.2 * UNIT)
        with pytest.raises(TimeoutError):  # frozen: connected, but no answer
            sock.recv(100)
        redis_process.resume()
        sock.settimeout(5 * UNIT)
        assert sock.recv(100) == b"+PONG\r\n"


def test_stop_ends_a_paused_redis(redis_process: RedisProcess) -> None:
    redis_process.pause()
    redis_process.stop()
    assert not redis_process.running


def test_a_taken_port_is_reported_with_the_log() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(RedisStartError, match="Address already in use"):
            RedisProcess(port).start()


def test_redis_url_is_emptied_for_each_test(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5 * UNIT)
    with client:
        assert client.dbsize() == 0
        client.set("left-behind", 1)  # the next test using redis_url must not see it


def test_redis_url_is_emptied_for_each_test_again(redis_url: str) -> None:
    test_redis_url_is_emptied_for_each_test(redis_url)


def test_cluster_of_three_keeps_a_hash_tag_on_one_node(
        redis_cluster: RedisClusterProcesses, redis_cluster_url: str) -> None:
    assert len(redis_cluster.urls) == 3 and redis_cluster_url == redis_cluster.urls[0]
    for node in redis_cluster.nodes:
        info = node.command("CLUSTER", "INFO")
        assert isinstance(info, bytes)
        assert b"cluster_state:ok" in info and b"cluster_known_nodes:3" in info
    client = RedisCluster.from_url(redis_cluster_url, socket_timeout=5 * UNIT)
    with client:
        assert client.keyslot("{x}log") == client.keyslot("{x}epoch")
        client.set("{x}log", 1)
        client.set("{x}epoch", 2)
        client.set("{y}log", 3)
        assert client.mget("{x}log", "{x}epoch") == [b"1", b"2"]  # one slot: one node
    keys = [node.command("KEYS", "{x}*") for node in redis_cluster.nodes]  # no redirects
    assert sorted(map(sorted, keys)) == [[], [], [b"{x}epoch", b"{x}log"]]
