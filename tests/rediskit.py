"""Redis servers of a test's own: one ``redis-server``, or a local cluster of three.

Tests never use the shared Redis on port 6379: they start ``/usr/bin/redis-server``
on 127.0.0.1 and a free port, in a temporary directory, with persistence off,
so stopping it loses everything (as a crashed Redis without persistence does)::

    with RedisProcess() as redis:          # started; answers PING
        use(redis.url)                     # redis://127.0.0.1:PORT/0
        redis.pause()                      # SIGSTOP: connections stay open, nothing answers
        redis.resume()                     # SIGCONT: answers what was sent meanwhile
        redis.restart()                    # same port, empty
    # stopped, directory removed

    with RedisClusterProcesses() as cluster:   # three masters, cluster_state:ok on each
        use(cluster.startup_url)
        cluster.migrate_slot(slot, port)   # a live CLUSTER SETSLOT / MIGRATE of one slot

Everything here is synchronous (subprocess, blocking sockets with timeouts), so
sync tests, async tests and fixtures of any scope can use it. Every wait is
bounded by a multiple of ``UNIT`` seconds (``tidings.testing.UNIT``, scaled by
``TIDINGS_TEST_UNIT``) and fails with the server's log. Processes are stopped by
``stop()`` or the ``with`` block, and, as a last resort, when the interpreter
exits. The pytest fixtures built on this are at the end of tests/conftest.py.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from tidings.testing import UNIT

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
HOST = "127.0.0.1"
#: Redis Cluster talks between nodes on the client port + this (the "cluster bus").
BUS_OFFSET = 10000
#: Seconds a single command may take to be answered.
COMMAND_TIMEOUT = 5 * UNIT
#: Seconds a server may take to answer PING after it is launched.
START_TIMEOUT = 10 * UNIT
#: Seconds a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5 * UNIT
#: Seconds a new cluster may take to be created and report ``cluster_state:ok``.
CLUSTER_TIMEOUT = 30 * UNIT
#: How many ports to try when a port picked as free turns out to be taken.
START_ATTEMPTS = 5

_LIVE: set[subprocess.Popen[bytes]] = set()
_OWNER_PID = os.getpid()


def redis_missing() -> str | None:
    """Why these servers cannot be started here, or ``None`` if they can.

    Tests skip with this reason (``apt-get install redis-server redis-tools``
    provides both programs; ``scripts/test`` installs them when run as root).
    """
    missing = [path for path in (REDIS_SERVER, REDIS_CLI) if not os.access(path, os.X_OK)]
    if missing:
        return (f"{' and '.join(missing)} not found: "
                "apt-get install redis-server redis-tools (scripts/test does it as root)")
    return None


def _ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to right now.

    Picked at random below the kernel's ephemeral range, so that a stopped
    server's port is not taken by some outgoing connection before the server
    is restarted on it. With ``with_bus`` the cluster bus port (port + 10000)
    is free too, and both stay below the ephemeral range (so below 55000).
    The port may still be taken by someone else before it is used: callers
    that launch a server on it retry with another (as :class:`RedisProcess`
    does).
    """
    low, high = 10000, min(_ephemeral_low(), 65536)
    if with_bus:
        high = min(high, 55000 + BUS_OFFSET) - BUS_OFFSET
    if high - low < 1000:  # an unusual ephemeral range: fall back to a wide one
        low, high = 1024, 55000 if with_bus else 65536
    for _ in range(1000):
        port = random.randrange(low, high)
        if _bindable(port) and (not with_bus or _bindable(port + BUS_OFFSET)):
            return port
    raise RuntimeError(f"no free port found in {low}..{high}")


class RedisError(Exception):
    """Redis answered a command with an error (``-ERR ...``)."""


def _read_reply(stream: BinaryIO) -> object:
    """One RESP2 reply from a buffered socket file: str, int, bytes, None, list or RedisError."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return stream.read(size + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"not a RESP2 reply: {line!r}")


def command(port: int, *args: str | bytes | int, timeout: float = COMMAND_TIMEOUT) -> object:
    """Send one command to the Redis on 127.0.0.1:``port`` and return its reply.

    Each call opens and closes its own connection. Raises :class:`RedisError`
    for an error reply, ``OSError`` (``TimeoutError``, ``ConnectionRefusedError``)
    if the server cannot be reached or does not answer within ``timeout``.
    """
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as stream:
            reply = _read_reply(stream)
    if isinstance(reply, RedisError):
        raise reply
    return reply


def _stop_all_at_exit() -> None:
    """Kill any server a test left running (forked children do not own them)."""
    if os.getpid() != _OWNER_PID:
        return
    for process in list(_LIVE):
        with contextlib.suppress(OSError):
            process.kill()
            process.wait(STOP_TIMEOUT)


atexit.register(_stop_all_at_exit)


class RedisStartError(RuntimeError):
    """A ``redis-server`` did not come up; the message ends with its log."""


class RedisProcess:
    """One ``redis-server`` of our own on 127.0.0.1, without persistence.

    ``RedisProcess()`` picks a free port (and another if that one is taken by
    the time the server binds it); ``RedisProcess(port=N)`` uses N. Nothing
    runs until :meth:`start` or ``with``. ``extra_args`` are appended to the
    command line (e.g. ``["--maxmemory", "1mb"]``), with ``{port}`` replaced
    by the port.
    """

    def __init__(self, port: int | None = None, *, extra_args: list[str] | None = None,
                 with_bus: bool = False) -> None:
        self._fixed_port = port is not None
        self._with_bus = with_bus
        self.port = port if port is not None else free_port(with_bus=with_bus)
        self.extra_args = list(extra_args or [])
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._restore: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive (paused counts as alive)."""
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<RedisProcess {self.url} {state}>"

    def log(self) -> str:
        """What the server wrote so far (empty once stopped: its directory is gone)."""
        if self.directory is None:
            return ""
        try:
            return (self.directory / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def command(self, *args: str | bytes | int, timeout: float = COMMAND_TIMEOUT) -> object:
        """Send one command to this server; see :func:`command`."""
        return command(self.port, *args, timeout=timeout)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Launch the server and return once it answers PING.

        Raises :class:`RedisStartError` with the server's log if it exits or
        does not answer within ``timeout`` seconds (it is stopped then).
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already started")
        for attempt in range(START_ATTEMPTS):
            try:
                self._launch(timeout)
                return
            except RedisStartError as exc:
                self.stop()
                port_taken = "Address already in use" in str(exc)
                if not port_taken or self._fixed_port or attempt == START_ATTEMPTS - 1:
                    raise
                self.port = free_port(with_bus=self._with_bus)

    def snapshot(self) -> dict[str, bytes]:
        """The server's persistence files as they are now (``dump.rdb``, ``appendonlydir/*``).

        Call ``SAVE`` first for an RDB snapshot; with ``--appendonly yes`` the
        AOF files are copied as they stand, which is an AOF that lost what
        comes after. Give it to :meth:`restart` to come back with this data.
        """
        assert self.directory is not None, "not started"
        return {str(path.relative_to(self.directory)): path.read_bytes()
                for path in sorted(self.directory.rglob("*"))
                if path.is_file() and path.name != "redis.log"}

    def _launch(self, timeout: float) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"tidings-redis-{self.port}-"))
        for name, content in self._restore.items():
            (self.directory / name).parent.mkdir(parents=True, exist_ok=True)
            (self.directory / name).write_bytes(content)
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", HOST,
                "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", "",
                *(arg.replace("{port}", str(self.port)) for arg in self.extra_args)]
        with open(self.directory / "redis.log", "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.directory)
        _LIVE.add(self.process)
        self.paused = False
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RedisStartError(f"redis-server on port {self.port} exited with status "
                                      f"{self.process.returncode}; its log:\n{self.log()}")
            try:
                if self.command("PING", timeout=0.5 * UNIT) == "PONG":
                    return
            except (OSError, RedisError):  # not listening yet, or still loading
                pass
            if time.monotonic() > deadline:
                raise RedisStartError(f"redis-server on port {self.port} did not answer PING "
                                      f"within {timeout:.1f} s; its log:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s) and remove its directory.

        Safe to call when it is not running. A paused server is resumed so that
        it sees the SIGTERM.
        """
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                    process.send_signal(signal.SIGCONT)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout)
            _LIVE.discard(process)
        self.paused = False
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def restart(self, timeout: float = START_TIMEOUT, *,
                snapshot: dict[str, bytes] | None = None) -> None:
        """Stop, then start a fresh server on the same port (same :attr:`url`).

        It starts empty, or with the data of a :meth:`snapshot` (the files are
        written to its new directory before it starts).
        """
        self.stop()
        fixed, self._fixed_port = self._fixed_port, True
        self._restore = snapshot or {}
        try:
            self.start(timeout)
        finally:
            self._fixed_port = fixed
            self._restore = {}

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing is answered."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT); it answers what was sent meanwhile."""
        self._signal(signal.SIGCONT)
        self.paused = False

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self!r} is not running")
        self.process.send_signal(signum)

    def __enter__(self) -> RedisProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _bytes(reply: object) -> bytes:
    return reply if isinstance(reply, bytes) else str(reply).encode()


class RedisClusterProcesses:
    """A real local Redis Cluster: three ``redis-server`` masters, no replicas.

    Each node has its own directory and a free port whose cluster bus port
    (port + 10000) is free too. :meth:`start` joins them with
    ``redis-cli --cluster create`` and returns once every node reports
    ``cluster_state:ok``.
    """

    SIZE = 3

    def __init__(self) -> None:
        self.nodes: list[RedisProcess] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        """One ``redis://127.0.0.1:PORT/0`` per node."""
        return [node.url for node in self.nodes]

    @property
    def startup_url(self) -> str:
        """The first node's URL: a cluster client discovers the others from it."""
        return self.nodes[0].url

    def __repr__(self) -> str:
        return f"<RedisClusterProcesses {self.ports}>"

    def start(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Start three nodes, create the cluster, wait for ``cluster_state:ok`` on each.

        Raises :class:`RedisStartError` (after stopping every node) if that
        does not happen within ``timeout`` seconds.
        """
        if self.nodes:
            raise RuntimeError(f"{self!r} is already started")
        deadline = time.monotonic() + timeout
        try:
            for _ in range(self.SIZE):
                # Started one by one, so a later node cannot pick an earlier one's
                # port or bus port: those are bound by then.
                node = RedisProcess(with_bus=True, extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes-{port}.conf",
                    "--cluster-node-timeout", "2000"])
                self.nodes.append(node)
                node.start()
            self._create(deadline)
            self._wait_ok(deadline)
        except BaseException:
            self.stop()
            raise

    def _create(self, deadline: float) -> None:
        argv = [REDIS_CLI, "--cluster", "create",
                *(f"{HOST}:{port}" for port in self.ports),
                "--cluster-replicas", "0", "--cluster-yes"]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired as exc:
            raise RedisStartError(f"{' '.join(argv)} did not finish:\n{exc.stdout!r}") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RedisStartError(f"{' '.join(argv)} failed ({done.returncode}):\n{output}"
                                  + self._logs())

    def wait_ok(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Return once every node reports ``cluster_state:ok`` (after a restart, a failover)."""
        self._wait_ok(time.monotonic() + timeout)

    def add_replica(self, master: int, timeout: float = CLUSTER_TIMEOUT) -> RedisProcess:
        """Start a node, make it a replica of the master on port ``master``; return it synced.

        It joins :attr:`nodes` (so :meth:`stop` stops it) once it replicates.
        """
        node = RedisProcess(with_bus=True, extra_args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes-{port}.conf",
            "--cluster-node-timeout", "2000"])
        node.start()
        self.nodes.append(node)
        deadline = time.monotonic() + timeout
        node.command("CLUSTER", "MEET", HOST, master)
        master_id = self.node_id(master)
        while True:  # the new node must know the master before it can follow it
            try:
                node.command("CLUSTER", "REPLICATE", master_id)
                break
            except RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while b"master_link_status:up" not in _bytes(node.command("INFO", "replication")):
            if time.monotonic() > deadline:
                raise RedisStartError(f"replica {node.port} of {master} did not sync"
                                      + self._logs())
            time.sleep(0.05)
        self._wait_ok(deadline)
        return node

    def _wait_ok(self, deadline: float) -> None:
        pending = list(self.nodes)
        while pending:
            node = pending[0]
            try:
                info = node.command("CLUSTER", "INFO")
            except (OSError, RedisError):
                info = b""
            if isinstance(info, bytes) and b"cluster_state:ok" in info:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RedisStartError(f"node {node.port} is not cluster_state:ok:\n"
                                      f"{info!r}" + self._logs())
            time.sleep(0.05)

    def _logs(self) -> str:
        return "".join(f"\n--- log of node {node.port}:\n{node.log()}" for node in self.nodes)

    def node_id(self, port: int) -> str:
        """The cluster id of the node on ``port`` (``CLUSTER MYID``)."""
        reply = command(port, "CLUSTER", "MYID")
        assert isinstance(reply, bytes)
        return reply.decode()

    def owner(self, slot: int) -> int:
        """The port of the master that owns ``slot``, as the first node sees it."""
        for first, last, master, *_replicas in self._slots():
            if first <= slot <= last:
                return int(master[1])
        raise LookupError(f"no node owns slot {slot}")

    def _slots(self) -> list[list[object]]:
        reply = self.nodes[0].command("CLUSTER", "SLOTS")
        assert isinstance(reply, list)
        return reply

    def begin_migration(self, slot: int, target: int) -> int:
        """Open a live move of ``slot`` to the node on port ``target``; return the source port.

        The target is told it is ``IMPORTING`` the slot, then the source that
        it is ``MIGRATING`` it (the order Redis documents). From now on a
        command for a key the source no longer has gets ``ASK``. Follow with
        :meth:`move_keys` and :meth:`end_migration`.
        """
        source = self.owner(slot)
        if source == target:
            raise ValueError(f"slot {slot} is on {target} already")
        command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def move_keys(self, slot: int, source: int, target: int, batch: int = 100) -> int:
        """``MIGRATE`` every key of ``slot`` from ``source`` to ``target``; how many moved."""
        moved = 0
        while True:
            keys = command(source, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            assert isinstance(keys, list)
            if not keys:
                return moved
            command(source, "MIGRATE", HOST, target, "", 0, int(COMMAND_TIMEOUT * 1000),
                    "KEYS", *keys)
            moved += len(keys)

    def end_migration(self, slot: int, source: int, target: int) -> None:
        """Give ``slot`` to ``target`` on every node: the target first, then the source.

        The source then drops its sharded subscriptions of the slot: each
        subscriber gets a ``sunsubscribe`` it did not ask for. Returns once
        every node names ``target`` as the owner.
        """
        target_id = self.node_id(target)
        others = [n.port for n in self.nodes if n.port not in (source, target)
                  and b"role:master" in _bytes(n.command("INFO", "replication"))]
        for port in (target, source, *others):
            command(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        for node in self.nodes:
            while True:
                reply = node.command("CLUSTER", "SLOTS")
                assert isinstance(reply, list)
                owner = next(int(m[1]) for first, last, m, *_ in reply if first <= slot <= last)
                if owner == target:
                    break
                if time.monotonic() > deadline:
                    raise RedisStartError(f"node {node.port} still gives slot {slot} to "
                                          f"{owner}" + self._logs())
                time.sleep(0.02)

    def migrate_slot(self, slot: int, target: int) -> int:
        """Move ``slot`` and its keys to ``target`` live (the three steps); the source port."""
        source = self.begin_migration(slot, target)
        self.move_keys(slot, source, target)
        self.end_migration(slot, source, target)
        return source

    def flushall(self) -> None:
        """Empty every master (FLUSHALL on each node)."""
        for node in self.nodes:
            node.command("FLUSHALL")

    def stop(self) -> None:
        """Stop every node and remove their directories. Safe to call twice."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.stop()

    def __enter__(self) -> RedisClusterProcesses:
        if not self.nodes:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
