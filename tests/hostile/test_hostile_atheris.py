"""A short run of the coverage-guided fuzzer of fuzz/fuzz_parsers.py (the long runs are manual)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import UNIT

HARNESS = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_parsers.py"


def test_the_parsers_survive_a_fuzzing_run(tmp_path: Path) -> None:
    # -runs bounds the work; a crash makes atheris exit non-zero and print the input.
    result = subprocess.run(
        [sys.executable, str(HARNESS), "-runs=50000", "-seed=1",
         f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=120 * UNIT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 50000 runs" in result.stderr
