"""tidings.d.ts: ``tsc --noEmit`` checks an example against the packed package's declarations.

The example (tests/js/typecheck/example.ts) uses the whole public API as
docs/browser-client.md shows it, and misuses it on ``@ts-expect-error`` lines
that must be errors. The declarations must name every export of tidings.js and
every public method of its client, and the module's public API carries JSDoc.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from jskit import HERE, Packed, packed, tool, tools

from tidings.server.static import STATIC_DIR
from tidings.testing import UNIT

__all__ = ["packed", "tools"]  # fixtures
SOURCE = (STATIC_DIR / "tidings.js").read_text()
DECLARATIONS = (STATIC_DIR / "tidings.d.ts").read_text()


def run_tsc(packed: Packed, tools: Path, name: str, code: str | None = None) -> str:
    """Copy the example (or ``code`` as ``name``) into the scratch project and run tsc there."""
    work = packed.project / "typecheck"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(HERE / "typecheck", work)
    if code is not None:
        (work / name).write_text(code)
    config = (work / "tsconfig.json").read_text().replace('"example.ts"', f'"{name}"')
    (work / "tsconfig.json").write_text(config)
    done = subprocess.run([str(tool("tsc")), "-p", "tsconfig.json"], cwd=work,
                          capture_output=True, text=True, timeout=120 * UNIT)
    assert "error TS6053" not in done.stdout, done.stdout  # a file not found
    return done.stdout if done.returncode else ""


def test_the_example_type_checks_and_misuse_is_refused(packed: Packed, tools: Path) -> None:
    assert run_tsc(packed, tools, "example.ts") == ""


def test_tsc_reports_code_the_declarations_refuse(packed: Packed, tools: Path) -> None:
    # The check above can fail: a program that misuses the API without @ts-expect-error.
    errors = run_tsc(packed, tools, "wrong.ts", """
import { connect } from "tidings";
const client = connect("/", { transports: ["smoke-signals"] });
client.subscribe("news", { onMessage: (message) => { const n: number = message.id; } });
""")
    assert "wrong.ts(3," in errors and "smoke-signals" in errors, errors
    assert "wrong.ts(4," in errors and "TS2322" in errors, errors


def test_every_export_and_public_method_is_declared() -> None:
    exported = set(re.findall(r"^export (?:const|function|class|async function) (\w+)",
                              SOURCE, re.M))
    for group in re.findall(r"^export \{([^}]*)\}", SOURCE, re.M):
        exported |= {name.strip() for name in group.split(",") if name.strip()}
    declared = set(re.findall(r"^export (?:const|function|class) (\w+)", DECLARATIONS, re.M))
    assert exported == declared
    client = re.search(r"^class Client \{\n(.*?)^\}", SOURCE, re.M | re.S)
    assert client is not None
    methods = set(re.findall(r"^  (?:async )?([a-z]\w*)\(", client.group(1), re.M))
    interface = re.search(r"^export interface Client \{\n(.*?)^\}", DECLARATIONS, re.M | re.S)
    assert interface is not None
    declared_methods = set(re.findall(r"^  (\w+)[<(]", interface.group(1), re.M))
    assert methods - {"constructor"} <= declared_methods
    # The client a tab gets when the connection is shared has the same public methods.
    shared = re.search(r"^class SharedClient \{\n(.*?)^\}", SOURCE, re.M | re.S)
    assert shared is not None
    assert set(re.findall(r"^  (?:async )?([a-z]\w*)\(", shared.group(1), re.M)) - {
        "constructor"} == methods - {"constructor"}


def test_the_public_api_has_jsdoc() -> None:
    # Editors show a /** ... */ just before a name; the source has one for each export too.
    names = re.findall(r"^export (?:function|class) (\w+)", SOURCE, re.M)
    for name in names:
        assert re.search(r"\*/\n(?:export )?(?:function|class) " + name + r"\b", SOURCE), name
    client = re.search(r"^class Client \{\n(.*?)^\}", SOURCE, re.M | re.S)
    assert client is not None
    for method in ("on", "subscribe", "publish", "close"):
        assert re.search(r"\*/\n  (?:async )?" + method + r"\(", client.group(1)), method
