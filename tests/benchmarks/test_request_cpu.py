"""``benchmarks/request_cpu.py``, every case briefly: each checks its own answers (every
request answered, with the status the case is about) and prints a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "request_cpu.py"


def test_every_case_answers_every_request() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--requests", "400", "--waiters", "20",
                          "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["case"] for r in results] == ["304", "empty", "page", "fresh", "longpoll", "etag"]
    assert all(r["us_per_request"] > 0 for r in results)


def test_connections_asking_in_turn_are_each_answered() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--requests", "400", "--connections", "50",
                          "--case", "304", "--case", "fresh", "--json"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["case"], r["requests"]) for r in results] == [("304", 400), ("fresh", 400)]
