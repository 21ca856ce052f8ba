"""One scrape for every worker of ``tidings serve --workers N``: their figures, added up.

Each worker keeps its own counters (server/metrics.py reads them at scrape
time). Under ``--workers`` the parent gives the workers a private directory
(mode 0700) where each one

- listens on a Unix socket, ``worker-I.sock``: whoever connects sends one
  line naming a question of :data:`QUESTIONS` (``metrics``: its figures, a
  :data:`Snapshot`; ``status``: its part of the live status page,
  server/status.py), and the worker answers it as JSON, then closes (an end
  of file before any line asks ``metrics``);
- saves its counters and histograms in ``worker-I.json`` whenever its figures
  leave the process (a scrape, a peer asking) and every
  :data:`SAVE_SECONDS`, and once more when it closes.

Whichever worker a scrape reaches (on the main port or on ``metrics_listen``,
which every worker listens on with ``SO_REUSEPORT``) asks every other worker
over its socket, adds their figures to its own (:func:`merge`) and answers the
total: counters and histogram buckets are summed, gauges summed or, where a sum
means nothing (``broker_up``, limits, start times), the minimum or maximum
(:data:`GAUGE_MERGE`).

**Counters never go backwards.** A worker started again (after a crash, a
kill) begins with what its predecessor saved (:attr:`WorkerShare.carried`) and
counts on from there; a worker that does not answer within
:data:`PEER_TIMEOUT` (dead, restarting, stuck) counts with what it saved. As a
worker saves its figures *before* they leave it, no scrape ever showed more
than what was saved, so the total a scrape shows never drops below an earlier
one while the parent runs. What a killed worker counted after its last save
(at most :data:`SAVE_SECONDS`) is lost: the totals under-count, they never
reset. A restart of the whole service starts a new directory: every counter
starts from 0, an ordinary counter reset to Prometheus.

Nothing here runs per delivery: the cost is a socket round trip per worker
per scrape, and a small file write every :data:`SAVE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from tidings.server import status

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.server")

#: Seconds between saves of a worker's counters (what a killed worker may lose at most).
SAVE_SECONDS = 5.0
#: Seconds a scrape waits for another worker's figures before counting with its saved ones.
PEER_TIMEOUT = 2.0
#: Bytes of one worker's figures read at most (they are a few kilobytes).
MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024
#: Bytes of a question read at most (a word and a newline).
MAX_QUESTION_BYTES = 64
#: What a worker answers on its socket: the question's word -> the answer's JSON type.
QUESTIONS: dict[str, type] = {"metrics": list, "status": dict}

#: One metric family, as JSON: ``{"name", "type", "help", "samples": [[name, labels, value]]}``.
Family = dict[str, Any]
#: Every family of a worker (or of several, merged).
Snapshot = list[Family]

#: Types whose samples are summed over workers and carried over a worker's restarts.
CUMULATIVE = ("counter", "histogram")
#: Gauges that are not summed over workers (the others are): name -> how they are combined.
GAUGE_MERGE: dict[str, Callable[[Iterable[float]], float]] = {
    "tidings_broker_up": min,  # 1 only while every worker reaches the broker
    "tidings_broker_channels": max,  # each worker replicates the same logs (Redis)
    "tidings_bridge_state": max,
    "tidings_bridge_failures": max,
    "tidings_bridge_last_seq": max,
    "tidings_bridge_lag_seconds": max,
    "tidings_bridge_pending_changes": max,
    "tidings_process_max_fds": max,  # a limit per process
    "tidings_process_start_time_seconds": min,  # the oldest worker's start
}


# figures as data (no I/O) ------------------------------------------------------------


def snapshot_of(metrics: Iterable[Metric]) -> Snapshot:
    """The families prometheus_client collected, as JSON-ready data."""
    return [{"name": m.name, "type": m.type, "help": m.documentation,
             "samples": [[s.name, s.labels, s.value] for s in m.samples]} for m in metrics]


def cumulative(snapshot: Snapshot) -> Snapshot:
    """Only the counters and histograms of ``snapshot`` (what a worker saves)."""
    return [family for family in snapshot if family["type"] in CUMULATIVE]


def merge(snapshots: Sequence[Snapshot]) -> Snapshot:
    """The figures of several workers as one: see :data:`GAUGE_MERGE` for gauges.

    Families and samples keep the order in which they first appear (histogram
    buckets stay in order: every worker has the same bounds).
    """
    families: dict[str, Family] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for snapshot in snapshots:
        for family in snapshot:
            name = family["name"]
            if name not in families:
                families[name] = {key: family[key] for key in ("name", "type", "help")}
                values[name] = {}
            samples = values[name]
            for sample_name, labels, value in family["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                samples.setdefault(key, []).append(float(value))
    merged: Snapshot = []
    for name, family in families.items():
        combine: Callable[[Iterable[float]], float] = sum
        if family["type"] == "gauge":
            combine = GAUGE_MERGE.get(name, sum)
        family["samples"] = [[sample_name, dict(labels), combine(found)]
                             for (sample_name, labels), found in values[name].items()]
        merged.append(family)
    return merged


def metrics_of(snapshot: Snapshot) -> Iterator[Metric]:
    """prometheus_client's families again, to write the exposition."""
    for family in snapshot:
        metric = Metric(family["name"], family["help"], family["type"])
        for sample_name, labels, value in family["samples"]:
            metric.add_sample(sample_name, labels, value)
        yield metric


class _Fixed:
    """A collector of figures already gathered."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics

    def describe(self) -> list[Metric]:
        return []


def exposition_of(snapshot: Snapshot) -> bytes:
    """The text exposition of ``snapshot`` (prometheus_client writes it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(metrics_of(snapshot))))
    return generate_latest(registry)


# one worker's part -------------------------------------------------------------------


class WorkerShare:
    """Worker ``index`` of ``count``'s side of the shared figures in ``directory``.

    The server runs :meth:`run` as a background task (it listens and saves)
    and answers a scrape with :meth:`exposition`.
    """

    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.directory = Path(directory)
        self.index = index
        self.count = count
        #: What this worker's predecessors counted (from its saved file): added to its own.
        self.carried: Snapshot = self._load(index)

    def socket_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"

    def saved_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.json"

    def own(self, server: Server) -> Snapshot:
        """This worker's figures (its predecessors' counts included), saved first."""
        figures = merge([snapshot_of(server.metrics_registry.collect()), self.carried])
        self._save(figures)
        return figures

    def others(self) -> list[int]:
        """The indexes of every other worker."""
        return [i for i in range(self.count) if i != self.index]

    async def ask_others(self, question: str) -> list[Any]:
        """Every other worker's answer to ``question`` (``None``: it did not answer in
        :data:`PEER_TIMEOUT`), in the order of :meth:`others`; all asked at once."""
        return list(await asyncio.gather(*(self._ask(i, question) for i in self.others())))

    async def exposition(self, server: Server) -> bytes:
        """Every worker's figures, added up, as the text exposition."""
        others = self.others()
        answers = await self.ask_others("metrics")
        snapshots = [self.own(server)]
        unreachable = 0
        for index, answer in zip(others, answers, strict=True):
            if answer is None:
                unreachable += 1
                answer = self._load(index)
            snapshots.append(answer)
        workers = GaugeMetricFamily(
            "tidings_workers", "Workers whose figures this scrape holds: answered, or "
            "unreachable (counted with their saved counters; their gauges are missing).",
            labels=["state"])
        workers.add_metric(["answered"], self.count - unreachable)
        workers.add_metric(["unreachable"], unreachable)
        return exposition_of(merge(snapshots) + snapshot_of([workers]))

    async def run(self, server: Server) -> None:
        """Answer the other workers and save every :data:`SAVE_SECONDS`, until cancelled."""
        path = self.socket_path(self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a predecessor's

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(PEER_TIMEOUT):
                    line = await reader.readline()
                question = line.decode("ascii").strip() or "metrics"
                if question not in QUESTIONS:
                    raise ValueError(f"no such question: {question[:MAX_QUESTION_BYTES]!r}")
                writer.write(json.dumps(self._answer(server, question)).encode())
                await writer.drain()
            except (OSError, TimeoutError, ValueError) as exc:
                # The asking worker gave up (it counts with what was saved) or asked
                # what this one does not know: it reads no answer and says so.
                logger.debug("a worker's question unanswered: %s", exc)
            except Exception:  # a bug: that question fails, this worker goes on
                logger.exception("answering another worker failed")
            finally:
                writer.close()

        listener = await asyncio.start_unix_server(answer, path, limit=MAX_QUESTION_BYTES)
        try:
            while True:
                await asyncio.sleep(SAVE_SECONDS)
                self.own(server)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                path.unlink()
            self.own(server)  # the last counts before this worker ends

    def _answer(self, server: Server, question: str) -> Any:
        if question == "status":
            return status.worker_part(server)
        return self.own(server)

    async def _ask(self, index: int, question: str = "metrics") -> Any:
        """Worker ``index``'s answer to ``question``, or ``None`` if it does not answer in time."""
        writer = None
        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(self.socket_path(index))
                writer.write(question.encode("ascii") + b"\n")
                await writer.drain()
                chunks, size = [], 0
                while chunk := await reader.read(65536):
                    size += len(chunk)
                    if size > MAX_SNAPSHOT_BYTES:
                        raise ValueError(f"more than {MAX_SNAPSHOT_BYTES} bytes")
                    chunks.append(chunk)
            answer = json.loads(b"".join(chunks))
            if not isinstance(answer, QUESTIONS[question]):
                raise ValueError(f"not a {QUESTIONS[question].__name__}")
            return answer
        except (OSError, TimeoutError, ValueError) as exc:
            logger.debug("worker %d's answer to %r: %s", index, question, exc)
            return None
        finally:
            if writer is not None:
                writer.close()

    def _save(self, figures: Snapshot) -> None:
        path = self.saved_path(self.index)
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(cumulative(figures)))
            os.replace(temporary, path)
        except OSError as exc:  # the directory removed under us: figures stay in memory
            logger.warning("cannot save this worker's counters in %s: %s", path, exc)

    def _load(self, index: int) -> Snapshot:
        try:
            saved = json.loads(self.saved_path(index).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            logger.warning("worker %d's saved counters unreadable: %s", index, exc)
            return []
        return saved if isinstance(saved, list) else []
