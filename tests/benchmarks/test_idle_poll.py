"""``benchmarks/nchan.py idle-poll`` against tidings and the canned-answer floor, briefly.

Interval pollers for about a second: every poll is answered (``304`` once the
first answer gave a cursor), none fails. The figures themselves are not
checked here (they belong to docs/benchmarks.md); only that the benchmark and
its floor (benchmarks/_floor.py) run and count what they should.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nchan.py"


@pytest.mark.parametrize(("server", "write"), [("tidings", ""), ("floor", ""),
                                               ("floor", "direct")])
def test_idle_poll_runs_against(server: str, write: str) -> None:
    """(``FLOOR_WRITE=direct``: the floor writes on the socket, not through the transport.)"""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "idle-poll", "--server", server, "--subscribers", "20",
         "--seconds", "1", "--warmup", "0.5", "--poll-interval", "0.1", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "FLOOR_WRITE": write})
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0 and lines, out.stdout + out.stderr
    result = json.loads(lines[-1])
    assert result["server"] == server and result["errors"] == 0
    assert result["requests"] >= 20 * 5  # ten polls a second each, for a second (some late)


def test_the_floor_answers_idle_poll_only() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "sse", "--server", "floor"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "idle-poll only" in out.stderr
