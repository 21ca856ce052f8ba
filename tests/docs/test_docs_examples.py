"""Every fenced ```python and ```sh example in README.md and docs/ runs, as pasted.

Each example runs against a live ``tidings serve`` on a free port: the guides'
address ``127.0.0.1:8000`` is replaced by the live server's, and nothing else
is changed; ``$TIDINGS_URL``, which the CLI reads, is the live server's URL.
``tidings`` is on ``PATH`` (this venv's) and the working directory is the
repository, so ``.venv/bin/...`` works as in the README.

A comment on the line just before a fence says how to run it:

* none: run it; it must exit 0 within ``30 * UNIT`` seconds;
* ``<!-- example: until-output CHANNEL... -->``: it reads until stopped; publish
  to the CHANNELs until it prints a line, then stop it;
* ``<!-- example: pytest -->``: it is a test module; run it with pytest;
* ``<!-- example: skip REASON -->``: not run, for one of the :data:`SKIP_REASONS`.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import UNIT

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
GUIDE_ADDRESS = "127.0.0.1:8000"
LANGUAGES = {"python": "python", "sh": "sh"}

#: Why an example may be left out; a skip marker must name one of these. Keep it short.
SKIP_REASONS = {
    "install": "installs packages (it would change the environment the tests run in)",
    "serves": "starts a server on the guide's fixed port, and runs until stopped",
    "self": "runs the test suite that holds this check",
    "database": "needs a PostgreSQL database of the reader's own ($DB)",
    "nodes": "needs several nodes sharing a Redis",
    "fragment": "part of the reader's program: it calls functions the reader writes",
}

#: Examples that may be skipped, in all the docs together (15 today).
MAX_SKIPPED = 15

_FENCE = re.compile(r"^(?P<marker><!-- example: (?P<how>[^>]*?) -->\n)?```(?P<lang>\w+)\n"
                    r"(?P<code>.*?)^```\n", re.S | re.M)


@dataclass(frozen=True)
class Example:
    doc: Path
    line: int
    language: str
    code: str
    how: str  #: "run", "until-output ...", "pytest" or "skip REASON"

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def examples() -> list[Example]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in _FENCE.finditer(text):
            if match["lang"] not in LANGUAGES:
                continue
            line = text.count("\n", 0, match.start("lang")) + 1
            found.append(Example(doc, line, match["lang"], match["code"],
                                 match["how"] or "run"))
    return found


EXAMPLES = examples()


def test_examples_are_found_and_every_skip_says_why() -> None:
    assert len(EXAMPLES) >= 20
    assert any(e.doc.name == "client.md" and e.language == "python" for e in EXAMPLES)
    for example in EXAMPLES:
        kind, _, rest = example.how.partition(" ")
        assert kind in ("run", "until-output", "pytest", "skip"), example.name
        if kind == "skip":
            assert rest in SKIP_REASONS, f"{example.name}: skip needs one of {list(SKIP_REASONS)}"
        if kind == "until-output":
            assert rest.split(), f"{example.name}: until-output needs channels to publish to"
    skipped = [e for e in EXAMPLES if e.how.startswith("skip")]
    assert len(skipped) <= MAX_SKIPPED, "make an example run rather than skip another one"


class Served:
    """``tidings serve`` on a free port, as a child process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", "0", "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = _read_line(self.process, 10 * UNIT)
        assert line.startswith("tidings serving on "), line
        self.url = line.removeprefix("tidings serving on ").strip()
        self.address = self.url.removeprefix("http://")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=10 * UNIT)


def _read_line(process: subprocess.Popen[str], within: float) -> str:
    """The next line ``process`` prints, or ``""`` if none comes within ``within`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=within):
            return ""
    return process.stdout.readline()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served()
    yield server
    server.stop()


def _command(example: Example, code: str) -> list[str]:
    if example.language == "python":
        return [sys.executable, "-c", code]
    return ["bash", "-e", "-o", "pipefail", "-c", code]


def _environment(served: Served) -> dict[str, str]:
    """This venv first on ``PATH``; ``$TIDINGS_URL`` (which the CLI reads) the live server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")
           or k == "TIDINGS_TEST_UNIT"}
    env["TIDINGS_URL"] = served.url
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


#: The examples that run: those marked ``skip`` are left out here, not skipped (in CI a
#: skipped test is a failure); their markers are checked by the test above.
RUNNABLE = [e for e in EXAMPLES if not e.how.startswith("skip")]


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.name for e in RUNNABLE])
def test_example_runs(example: Example, served: Served, tmp_path: Path) -> None:
    kind, _, rest = example.how.partition(" ")
    if example.language == "sh" and "curl " in example.code and shutil.which("curl") is None:
        if os.environ.get("CI"):
            pytest.fail("curl is missing (scripts/test installs it as root)")
        pytest.skip("curl is not installed")
    code = example.code.replace(GUIDE_ADDRESS, served.address)
    if kind == "pytest":
        module = tmp_path / "test_example.py"
        module.write_text(code)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
             "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
             str(module)], cwd=tmp_path,
            capture_output=True, text=True, timeout=60 * UNIT, env=_environment(served))
        assert result.returncode == 0, f"{example.name}:\n{result.stdout}\n{result.stderr}"
    elif kind == "until-output":
        _run_until_output(example, code, rest.split(), served)
    else:
        process = subprocess.Popen(_command(example, code), cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=_environment(served),
                                   start_new_session=True)
        try:
            out, err = process.communicate(timeout=30 * UNIT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # and whatever it started
            out, err = process.communicate()
            pytest.fail(f"{example.name} did not end within {30 * UNIT} s:\n{out}\n{err}")
        assert process.returncode == 0, f"{example.name}:\n{out}\n{err}"


def _run_until_output(example: Example, code: str, channels: list[str],
                      served: Served) -> None:
    """Start a reader that runs until stopped; publish until it prints; then stop it."""
    process = subprocess.Popen(_command(example, code), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_environment(served),
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 20 * UNIT
        line = ""
        with httpx.Client(base_url=served.url, timeout=5 * UNIT) as http:
            while not line and process.poll() is None and time.monotonic() < deadline:
                for channel in channels:  # it may start reading at the end of the log
                    http.post(f"/channels/{channel}", json={"from": "test_docs_examples"})
                line = _read_line(process, UNIT / 5)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may have ended already
            os.killpg(process.pid, signal.SIGTERM)
        _out, err = process.communicate(timeout=10 * UNIT)
    assert line, f"{example.name} printed nothing (exit {process.returncode}):\n{err}"
