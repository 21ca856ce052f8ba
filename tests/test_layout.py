"""No package imports another package's private modules or names.

A module or name whose own name starts with ``_`` is private to the package
that holds it, and to that package's subpackages: ``tidings.client._session``
may be imported anywhere under ``tidings.client``, never from
``tidings.bridges``. What another package needs gets a public home instead
(``tidings.backoff``, ``tidings.server_api``, ``tidings.testing``).

Checked on the source (ast) rather than by importing, like
tests/core/test_core_no_io.py: an import inside a function or under
``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

#: The directory that holds the ``tidings`` package.
ROOT = Path(__file__).resolve().parents[1] / "src"

#: ``(importing module, private target)`` pairs tolerated for now. Only modules
#: of server/, core/, wire/ and errors.py (being rewritten) may be listed here,
#: each with a comment; the list only shrinks. It is empty: keep it so.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class PrivateImport:
    """``module`` (in package ``package``) imports ``target``, private to ``owner``."""

    module: str
    package: str
    line: int
    target: str
    owner: str

    @property
    def allowed(self) -> bool:
        return self.package == self.owner or self.package.startswith(self.owner + ".")

    def __str__(self) -> str:
        return f"{self.module} line {self.line}: {self.target} (private to {self.owner})"


def module_of(path: Path, root: Path) -> tuple[str, str]:
    """The dotted name of the module at ``path``, and the package it belongs to."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    return ".".join(parts), ".".join(parts[:-1])


def is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def owner_of(target: str, root: Path) -> str | None:
    """The package ``target`` (a dotted module or ``module.name``) is private to, if any.

    The path before its first private part names a package or a module; a
    module's privates belong to the package that holds it.
    """
    parts = target.split(".")
    for index, part in enumerate(parts):
        if is_private(part):
            holder = parts[:index]
            if not (root.joinpath(*holder)).is_dir():
                holder = holder[:-1]
            return ".".join(holder)
    return None


def imported_targets(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every ``tidings`` module or ``module.name`` the file imports, absolute."""
    package = module_of(path, root)[1]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is this module's package
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                assert node.module is not None
                base = node.module
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return [(line, target) for line, target in found if target.split(".")[0] == "tidings"]


def private_imports(root: Path = ROOT) -> list[PrivateImport]:
    """Every import of a private module or name in the ``tidings`` tree under ``root``."""
    found = []
    for path in sorted((root / "tidings").rglob("*.py")):
        module, package = module_of(path, root)
        for line, target in imported_targets(path, root):
            owner = owner_of(target, root)
            if owner is not None:
                found.append(PrivateImport(module, package, line, target, owner))
    return found


def test_the_tree_is_read() -> None:
    found = private_imports()
    assert any(i.module == "tidings.client" and i.target.startswith("tidings.client._client")
               for i in found), "the checker no longer sees the client's own private imports"


def test_no_package_imports_another_packages_privates() -> None:
    bad = [str(i) for i in private_imports()
           if not i.allowed and (i.module, i.target) not in KNOWN_EXCEPTIONS]
    assert not bad, ("private modules or names imported from another package; give them a "
                     "public home instead:\n" + "\n".join(bad))


def test_known_exceptions_are_still_needed() -> None:
    present = {(i.module, i.target) for i in private_imports() if not i.allowed}
    stale = sorted(KNOWN_EXCEPTIONS - present)
    assert not stale, f"fixed already: remove from KNOWN_EXCEPTIONS: {stale}"


def test_the_checker_tells_own_privates_from_others(tmp_path: Path) -> None:
    files = {
        "tidings/__init__.py": "",
        "tidings/a/__init__.py": "from tidings.a._impl import thing\n",
        "tidings/a/_impl.py": "thing = 1\n_hidden = 2\n",
        "tidings/a/public.py": "from tidings.a._impl import _hidden\nfrom . import _impl\n",
        "tidings/a/sub/__init__.py": "",
        "tidings/a/sub/deep.py": "from tidings.a._impl import thing\nfrom .._impl import _hidden\n",
        "tidings/b/__init__.py": "",
        "tidings/b/user.py": (
            "from tidings.a._impl import thing\n"      # another package's private module
            "from tidings.a.public import _x\n"        # another package's private name
            "import tidings.a._impl\n"
            "from ..a import _impl\n"
            "from tidings.a import thing, __doc__\n"   # public, and a dunder: fine
            "def later():\n    from tidings.a.sub import _late\n"
        ),
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    found = private_imports(tmp_path)
    assert sorted((i.module, i.line, i.owner) for i in found if not i.allowed) == [
        ("tidings.b.user", 1, "tidings.a"),
        ("tidings.b.user", 2, "tidings.a"),
        ("tidings.b.user", 3, "tidings.a"),
        ("tidings.b.user", 4, "tidings.a"),
        ("tidings.b.user", 7, "tidings.a.sub"),
    ]
    assert {(i.module, i.target) for i in found if i.allowed} == {
        ("tidings.a", "tidings.a._impl.thing"),
        ("tidings.a.public", "tidings.a._impl._hidden"),
        ("tidings.a.public", "tidings.a._impl"),
        ("tidings.a.sub.deep", "tidings.a._impl.thing"),
        ("tidings.a.sub.deep", "tidings.a._impl._hidden"),
    }
