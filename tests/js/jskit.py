"""Node and npm for the JavaScript tests: the packed package, installed into a scratch project.

Node (20 or later) and npm come from Debian's or NodeSource's packages; without
them these tests skip, and in CI (``CI=true``) they fail. Nothing here needs the
npm registry: the package has no dependencies, so ``npm install ./tidings-X.tgz``
works offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidings.testing import UNIT

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: The oldest Node the package supports (package.json's "engines").
NODE_MAJOR = 20
#: npm without the chatter, the update check or the audit (none of which is offline).
NPM_ENV = {"npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false", "npm_config_loglevel": "warn"}


def node_missing(why: str) -> None:
    """Skip the test, or fail it in CI, where every test must run."""
    message = (f"{why}; the JavaScript tests need Node {NODE_MAJOR}+ and npm"
               " (apt-get install nodejs npm)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_node() -> tuple[str, str]:
    """The paths of node and npm, after checking Node's version."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        node_missing("node or npm is not on PATH")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    if major < NODE_MAJOR:
        node_missing(f"node is {version.stdout.strip()}")
    return node, npm


def npm(npm_path: str, *args: str, cwd: Path) -> str:
    """Run npm; fail the test with npm's own words when it fails."""
    done = subprocess.run([npm_path, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **NPM_ENV}, timeout=120 * UNIT)
    assert done.returncode == 0, f"npm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Packed:
    """The package as ``npm pack`` made it, and a scratch project that installed it."""

    tarball: Path
    project: Path
    node: str
    npm: str

    def member(self, path: str) -> bytes:
        """A file of the tarball (``path`` relative to the package's root)."""
        with tarfile.open(self.tarball) as archive:
            extracted = archive.extractfile(f"package/{path}")
            assert extracted is not None, path
            return extracted.read()

    def names(self) -> list[str]:
        with tarfile.open(self.tarball) as archive:
            return sorted(name.removeprefix("package/") for name in archive.getnames())


def pack_and_install(workdir: Path) -> Packed:
    """``npm pack`` the repository, then ``npm install`` the tarball into a new project."""
    node, npm_path = require_node()
    out = workdir / "dist"
    out.mkdir()
    listing = json.loads(npm(npm_path, "pack", "--json", "--pack-destination", str(out), str(ROOT),
                             cwd=workdir))
    tarball = out / listing[0]["filename"]
    project = workdir / "scratch"
    project.mkdir()
    (project / "package.json").write_text(json.dumps(
        {"name": "scratch", "private": True, "type": "module"}))
    npm(npm_path, "install", "--offline", str(tarball), cwd=project)
    return Packed(tarball, project, node, npm_path)


def tool(name: str) -> Path:
    """The path of a tool installed in tests/js/node_modules/.bin."""
    return HERE / "node_modules" / ".bin" / name


def install_tools() -> Path:
    """``npm ci`` in tests/js, from its lockfile, unless what it pins is installed already.

    This needs the npm registry the first time (CI has it); after that, npm's cache serves it.
    Returns tests/js/node_modules.
    """
    _, npm_path = require_node()
    pinned = _versions(HERE / "package-lock.json")
    installed = HERE / "node_modules" / ".package-lock.json"
    if not installed.exists() or _versions(installed) != pinned:
        npm(npm_path, "ci", "--prefer-offline", cwd=HERE)
    return HERE / "node_modules"


def _versions(lockfile: Path) -> dict[str, str]:
    packages = json.loads(lockfile.read_text())["packages"]
    return {name: entry["version"] for name, entry in packages.items() if name}


# Fixtures: a test module imports them (``from jskit import packed, tools``).


@pytest.fixture(scope="session")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """The repository packed by ``npm pack`` and installed into a scratch project."""
    return pack_and_install(tmp_path_factory.mktemp("npm"))


@pytest.fixture(scope="session")
def tools() -> Path:
    """tests/js/node_modules: TypeScript and React (tests/js/package.json)."""
    return install_tools()
