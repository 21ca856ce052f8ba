"""``tidings serve --workers N``: N server processes on one port, supervised by the parent.

The parent binds the port and never serves: it forks the workers, waits until
each says it listens, prints ``tidings serving on URL``, then watches them.

- **One port.** On Linux each worker listens on a socket of its own bound to
  the same address with ``SO_REUSEPORT``, and the kernel spreads new
  connections over the workers that listen. The parent keeps a bound socket
  that does not listen, so the port (even ``--port 0``) stays ours while a
  worker restarts. Where ``SO_REUSEPORT`` is missing, the workers share the
  parent's listening socket instead.
- **Supervised.** A worker that exits or is killed is started again, at once
  if it had run for :data:`STEADY_SECONDS`, else after a growing delay
  (:class:`Restarts`), so a worker that cannot start does not spin. A worker
  that dies before it first listens stops the whole start: the error is the
  operator's to fix.
- **One scrape.** The parent makes a private directory where the workers
  share their figures (server/workermetrics.py): whichever worker a scrape of
  ``/metrics`` reaches answers the total of all. With ``metrics_listen``, the
  parent holds that address too (bound, not listening, as the main port) and
  every worker listens on it with ``SO_REUSEPORT``.
- **Drained.** SIGTERM or SIGINT to the parent is sent on to every worker,
  which says goodbye to its clients as a lone ``tidings serve`` does (SIGTERM:
  streams told to reconnect elsewhere over ``drain_period``; SIGINT: at once); a worker
  still running after :data:`STOP_SECONDS` is killed. A second signal kills
  them at once.

Workers share channels only through the broker, so more than one needs Redis
(:func:`check_workers`). The sequencing of restarts is :class:`Restarts`, with
no I/O; the rest is a thin driver of processes, pipes and signals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tidings.backoff import Backoff
from tidings.errors import UsageError
from tidings.settings import Settings, split_listen
from tidings.wire import http

logger = logging.getLogger("tidings.workers")

#: Seconds a worker must have run for its death to be restarted at once.
STEADY_SECONDS = 10.0
#: Delays before restarting a worker that died sooner (grows per quick death in a row).
RESTART_BACKOFF = Backoff(initial=0.5, maximum=30.0)
#: Seconds a worker has to say it listens, at start or restart, before it is killed.
START_SECONDS = 60.0
#: Seconds the workers have to drain after SIGTERM before they are killed.
STOP_SECONDS = 30.0
#: Pending connections per listening socket (as a lone server's).
LISTEN_BACKLOG = 4096

#: What a worker runs: ``run(index, sock, ready)``; ``sock`` is its listening socket and
#: ``ready()`` must be called once it accepts. It returns (or raises) when the worker ends.
WorkerMain = Callable[[int, socket.socket, Callable[[], None]], None]


def worker_count(text: str) -> int:
    """``--workers``: a count of at least 1, or ``auto`` (the cores this process may use)."""
    if text == "auto":
        return available_cores()
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"--workers must be a number or 'auto', not {text!r}") from None
    if count < 1:
        raise UsageError("--workers must be at least 1")
    return count


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def check_workers(settings: Settings, count: int) -> None:
    """Raise :class:`UsageError` unless ``count`` workers can share what ``settings`` keep."""
    if count > 1 and settings.broker == "memory":
        raise UsageError(
            f"--workers {count} needs a shared broker: with the memory broker each worker "
            "keeps channels of its own, so a client on one worker would not receive what is "
            "published on another. Run the workers over Redis (--broker "
            "redis://HOST:PORT/DB, docs/operations.md), or use --workers 1.")


@dataclass
class Restarts:
    """When to start a worker again after it died; no I/O, times are given.

    Call :meth:`started` when a worker starts and :meth:`delay` when it dies:
    a worker that ran :data:`STEADY_SECONDS` or more comes back at once; each
    quicker death in a row waits longer (:data:`RESTART_BACKOFF`'s ceilings).
    """

    steady: float = STEADY_SECONDS
    backoff: Backoff = RESTART_BACKOFF
    _started: dict[int, float] = field(default_factory=dict)
    _quick_deaths: dict[int, int] = field(default_factory=dict)

    def started(self, index: int, now: float) -> None:
        self._started[index] = now

    def delay(self, index: int, now: float) -> float:
        """Seconds to wait before starting worker ``index`` again, which died at ``now``."""
        if now - self._started.get(index, now) >= self.steady:
            self._quick_deaths[index] = 0
            return 0.0
        quick = self._quick_deaths.get(index, 0)
        self._quick_deaths[index] = quick + 1
        return self.backoff.ceiling(quick)


@dataclass
class _Worker:
    index: int
    pid: int
    ready_fd: int  # the read end of its readiness pipe, or -1 once it said so
    started: float
    ready: bool = False


class Supervisor:
    """Runs ``count`` workers of ``main`` on ``settings``' address until SIGTERM/SIGINT.

    Use :meth:`run` (it blocks, and returns the exit status for the command).
    The parent must not run an event loop or threads: workers are forked.
    Workers run on :attr:`settings` (``metrics_listen`` resolved to the address
    the parent holds) and share their figures in :attr:`shared`.
    """

    def __init__(self, settings: Settings, count: int, main: WorkerMain,
                 on_serving: Callable[[str], None]) -> None:
        self.settings = settings
        self.count = count
        self.main = main
        self.on_serving = on_serving
        self.restarts = Restarts()
        self.workers: dict[int, _Worker] = {}  # by pid
        self.reuse_port = hasattr(socket, "SO_REUSEPORT")
        self.port = settings.port
        self._address: tuple[socket.AddressFamily, tuple[object, ...]] | None = None
        self._reserved: socket.socket | None = None
        self._metrics_reserved: socket.socket | None = None
        #: The workers' private directory (metrics), made by :meth:`run`, removed at its end.
        self.shared = Path()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = -1, -1
        self._stopping = 0.0  # when draining began (monotonic), 0 while serving
        self._signals = 0
        self._first_signal: int = signal.SIGTERM
        self._due: dict[int, float] = {}  # index -> when to restart it

    # the parent ---------------------------------------------------------------

    def run(self) -> int:
        """Bind, start the workers, supervise; the exit status once all have ended."""
        self._reserve()
        self._install_signals()
        self.shared = Path(tempfile.mkdtemp(prefix="tidings-workers-"))
        try:
            started = self._start_all()
            if started:
                self.on_serving(self.url)
            elif not self._signals:
                return 1
            self._supervise()  # stopped while starting: drains at once
            return 0
        finally:
            self._kill_all()
            signal.set_wakeup_fd(-1)
            self._selector.close()
            for fd in (self._wake_read, self._wake_write):
                os.close(fd)
            if self._reserved is not None:
                self._reserved.close()
            if self._metrics_reserved is not None:
                self._metrics_reserved.close()
            shutil.rmtree(self.shared, ignore_errors=True)

    @property
    def url(self) -> str:
        return http.local_url(self.settings.host, self.port)

    def _reserve(self) -> None:
        infos = socket.getaddrinfo(self.settings.host or None, self.settings.port,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _type, _proto, _name, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            if not self.reuse_port:
                sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        self._reserved = sock
        self.port = sock.getsockname()[1]
        self._address = (family, (*address[:1], self.port, *address[2:]))
        self._reserve_metrics()

    def _reserve_metrics(self) -> None:
        """Hold ``metrics_listen`` (bound with ``SO_REUSEPORT``, not listening), so that
        every worker listens there and the port (even 0) stays ours across restarts."""
        if not (self.settings.metrics and self.settings.metrics_listen):
            return
        if not self.reuse_port:
            raise UsageError("metrics_listen with --workers needs SO_REUSEPORT (Linux); "
                             "serve /metrics on the main port instead")
        host, port = split_listen(self.settings.metrics_listen)
        family, _type, _proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"metrics_listen {self.settings.metrics_listen}: "
                          f"{exc.strerror}") from None
        except BaseException:
            sock.close()
            raise
        self._metrics_reserved = sock
        ip, bound = str(address[0]), sock.getsockname()[1]
        where = f"[{ip}]:{bound}" if family == socket.AF_INET6 else f"{ip}:{bound}"
        self.settings = self.settings.replace(metrics_listen=where)

    def _install_signals(self) -> None:
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self._wake_write)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        if not self._signals:
            self._first_signal = signum
        self._signals += 1

    def _start_all(self) -> bool:
        """Start every worker and wait until each listens; false if one could not."""
        for index in range(self.count):
            self._spawn(index)
        deadline = time.monotonic() + START_SECONDS
        while not all(worker.ready for worker in self.workers.values()):
            if self._signals:
                return False
            self._wait(deadline - time.monotonic())
            if self._reap(restart=False) or time.monotonic() > deadline:
                print("tidings: a worker did not start; see the errors above", file=sys.stderr,
                      flush=True)
                return False
        pids = ", ".join(str(pid) for pid in sorted(self.workers))
        logger.info("%d workers serving on %s (pids %s)", self.count, self.url, pids)
        if self._metrics_reserved is not None:
            logger.info("metrics of all workers on http://%s/metrics",
                        self.settings.metrics_listen)
        return True

    def _supervise(self) -> None:
        while True:
            now = time.monotonic()
            if self._signals and not self._stopping:
                print(f"tidings: draining {len(self.workers)} workers", file=sys.stderr,
                      flush=True)
                self._stopping = now
                self._due.clear()
                # The same signal: SIGTERM drains (a rolling restart), SIGINT stops at once.
                self._signal_all(self._first_signal)
            if self._stopping and (self._signals > 1 or now - self._stopping > STOP_SECONDS):
                self._signal_all(signal.SIGKILL)
            self._reap(restart=not self._stopping)
            if self._stopping and not self.workers:
                return
            for index, when in list(self._due.items()):
                if when <= now:
                    del self._due[index]
                    self._spawn(index)
            self._check_starting(now)
            wake = [when - now for when in self._due.values()]
            if self._stopping:
                wake.append(self._stopping + STOP_SECONDS - now)
            self._wait(max(0.0, min(wake, default=1.0)))

    def _check_starting(self, now: float) -> None:
        for worker in self.workers.values():
            if not worker.ready and now - worker.started > START_SECONDS:
                logger.error("worker %d (pid %d) did not listen within %.0f s: killing it",
                             worker.index, worker.pid, START_SECONDS)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a worker's readiness, or ``timeout`` seconds."""
        for key, _events in self._selector.select(max(timeout, 0.0)):
            fd = key.fd
            if fd == self._wake_read:
                with contextlib.suppress(BlockingIOError):
                    while os.read(fd, 512):
                        pass
                continue
            worker = next(w for w in self.workers.values() if w.ready_fd == fd)
            data = os.read(fd, 1)
            self._selector.unregister(fd)
            os.close(fd)
            worker.ready_fd = -1
            worker.ready = bool(data)  # EOF without a byte: it is dying; _reap sees it

    def _reap(self, *, restart: bool) -> bool:
        """Collect the workers that ended; schedule restarts; whether any ended."""
        ended = False
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            ended = True
            if worker.ready_fd >= 0:
                self._selector.unregister(worker.ready_fd)
                os.close(worker.ready_fd)
            how = _describe(status)
            if not restart:
                if not self._stopping:
                    logger.error("worker %d (pid %d) %s", worker.index, pid, how)
                continue
            now = time.monotonic()
            delay = self.restarts.delay(worker.index, now)
            logger.warning("worker %d (pid %d) %s; starting it again%s", worker.index, pid,
                           how, f" in {delay:.1f} s" if delay else "")
            self._due[worker.index] = now + delay
        return ended

    def _signal_all(self, signum: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _kill_all(self) -> None:
        """On the way out (also after an error): no worker outlives the parent."""
        self._signal_all(signal.SIGKILL)
        for pid in list(self.workers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.workers.clear()

    def _spawn(self, index: int) -> None:
        ready_read, ready_write = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            os.close(ready_read)
            os._exit(self._worker(index, ready_write, parent))
        os.close(ready_write)
        now = time.monotonic()
        self.restarts.started(index, now)
        self.workers[pid] = _Worker(index, pid, ready_read, now)
        self._selector.register(ready_read, selectors.EVENT_READ)

    # a worker -----------------------------------------------------------------

    def _worker(self, index: int, ready_write: int, parent: int) -> int:
        try:
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            _exit_with_parent(parent)
            self._selector.close()
            for fd in (self._wake_read, self._wake_write, *(
                    w.ready_fd for w in self.workers.values() if w.ready_fd >= 0)):
                os.close(fd)
            if self._metrics_reserved is not None:
                self._metrics_reserved.close()
            sock = self._listening_socket()

            def ready() -> None:
                os.write(ready_write, b"1")
                os.close(ready_write)

            self.main(index, sock, ready)
            return 0
        except KeyboardInterrupt:
            return 130
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            logger.exception("worker %d failed", index)
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

    def _listening_socket(self) -> socket.socket:
        """This worker's socket: its own on the shared port, or the parent's."""
        assert self._reserved is not None and self._address is not None
        if not self.reuse_port:
            return self._reserved
        self._reserved.close()
        family, address = self._address
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        return sock


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _exit_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM if the parent dies (Linux), so that no
    worker keeps serving the port unsupervised."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not on Linux
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_health(index: int, count: int) -> Callable[[], object]:
    """The ``worker`` section of a worker's ``/healthz``: which process answered."""
    section = {"index": index, "pid": os.getpid(), "workers": count}
    return lambda: section
