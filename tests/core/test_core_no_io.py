"""core/, wire/ and session/ do no I/O: none of their modules imports an I/O library.

Checked on the source (ast) rather than by importing, so a lazy import inside
a function counts too, and importing ``tidings`` (whose ``__init__`` pulls in
the server) does not blur the answer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tidings"
PURE_PACKAGES = ("core", "wire", "session")
FORBIDDEN = frozenset({"asyncio", "socket", "selectors", "ssl", "httptools", "uvloop",
                       "threading", "subprocess"})
#: What pure modules may import from tidings itself (errors.py is checked too).
ALLOWED_TIDINGS = ("tidings.core", "tidings.wire", "tidings.session", "tidings.errors")

PURE_FILES = [
    *sorted(path for package in PURE_PACKAGES for path in (SRC / package).rglob("*.py")),
    SRC / "errors.py",
]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in the file, absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                package = path.relative_to(SRC.parent).with_suffix("").parts[: -node.level]
                base = ".".join(package)
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                assert node.module is not None
                found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_pure_packages_are_found() -> None:
    names = {p.relative_to(SRC).as_posix() for p in PURE_FILES}
    assert {"core/log.py", "core/cursor.py", "wire/websocket.py", "wire/sse.py"} <= names


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: p.relative_to(SRC).as_posix())
def test_no_io_imports(path: Path) -> None:
    bad = [
        f"line {line}: {name}"
        for line, name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not bad, f"{path.relative_to(SRC)} imports I/O modules: {bad}"


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: p.relative_to(SRC).as_posix())
def test_only_pure_tidings_imports(path: Path) -> None:
    """Importing e.g. tidings.server from core would bring asyncio in through the back door."""
    bad = [
        f"line {line}: {name}"
        for line, name in imported_modules(path)
        if name.split(".")[0] == "tidings"
        and not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED_TIDINGS)
    ]
    assert not bad, f"{path.relative_to(SRC)} imports impure tidings modules: {bad}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio", "asyncio"),
        ("import asyncio.streams as s", "asyncio.streams"),
        ("from socket import socket", "socket"),
        ("def f():\n    import ssl", "ssl"),
        ("import importlib\nimportlib.import_module('uvloop')", "uvloop"),
        ("__import__('selectors')", "selectors"),
    ],
)
def test_the_checker_catches_imports(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert expected in [name for _, name in imported_modules(path)]
