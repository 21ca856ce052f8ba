"""Two builds of tidings against the same load, interleaved in one run (A/B).

On a machine shared with other work, two runs minutes apart are not
comparable; runs interleaved (old, new, old, new, ...) share whatever the
machine was doing. ``--baseline`` is the ``src`` directory of the other build
(``git archive main src | tar -x -C /tmp/base`` makes one); its server runs
with ``PYTHONPATH`` set to it, the new one with this checkout. Each round runs
``benchmarks/nchan.py LOAD --server tidings`` once per build (``--nchan`` adds
nginx + nchan to each round, for reference) and the table lists every run, then
the median of each build (``--floor`` adds benchmarks/_floor.py, canned answers on
uvloop, to each round of ``idle-poll``)::

    .venv/bin/python benchmarks/ab.py idle-poll --baseline /tmp/base/src --rounds 3 \\
        --subscribers 10000 --seconds 8
    .venv/bin/python benchmarks/ab.py longpoll --baseline /tmp/base/src --rounds 3 \\
        --subscribers 1000 --rate 50 --seconds 8 --nchan

Arguments after the known ones go to nchan.py as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = {
    "idle-poll": ("us_per_request", "user_us_per_request", "server_cpu_percent",
                  "requests_per_s", "errors"),
    "default": ("us_per_delivered", "server_cpu_percent", "deliveries_per_s", "latency_p50_ms",
                "latency_p99_ms", "missing"),
}


def run_once(load: str, build: str, baseline: str, extra: list[str]) -> dict[str, object]:
    env = dict(os.environ)
    server = build if build in ("nchan", "floor") else "tidings"
    if build == "old":
        env["PYTHONPATH"] = baseline
    command = [sys.executable, str(HERE / "nchan.py"), load, "--server", server, "--json", *extra]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"nchan.py failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("load", choices=("idle-poll", "websocket", "sse", "longpoll"))
    parser.add_argument("--baseline", required=True, help="the other build's src directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nchan", action="store_true", help="run nchan in every round too")
    parser.add_argument("--floor", action="store_true",
                        help="idle-poll: run the canned-answer floor (benchmarks/_floor.py) too")
    args, extra = parser.parse_known_args(argv)
    if not (Path(args.baseline) / "tidings" / "__init__.py").exists():
        parser.error(f"{args.baseline} holds no tidings package")
    columns = COLUMNS.get(args.load, COLUMNS["default"])
    builds = ["old", "new", *(["nchan"] if args.nchan else []),
              *(["floor"] if args.floor else [])]
    results: dict[str, list[dict[str, object]]] = {build: [] for build in builds}
    print("| round | build | " + " | ".join(columns) + " |")
    print("|---:|---|" + "---:|" * len(columns))
    for round_ in range(1, args.rounds + 1):
        for build in builds:
            result = run_once(args.load, build, args.baseline, extra)
            results[build].append(result)
            print(f"| {round_} | {build} | " + " | ".join(str(result.get(c)) for c in columns)
                  + " |", flush=True)
    for build in builds:
        medians = []
        for column in columns:
            values = [r[column] for r in results[build] if isinstance(r.get(column), int | float)]
            medians.append(str(round(statistics.median(values), 2)) if values else "-")
        print(f"| median | {build} | " + " | ".join(medians) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
