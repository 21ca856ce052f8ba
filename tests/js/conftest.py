"""Fixtures of the JavaScript tests: the packed package, and TypeScript from npm."""

from __future__ import annotations

from pathlib import Path

import pytest
from jskit import Packed, install_tools, pack_and_install


@pytest.fixture(scope="session")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """The repository packed by ``npm pack`` and installed into a scratch project."""
    return pack_and_install(tmp_path_factory.mktemp("npm"))


@pytest.fixture(scope="session")
def tools() -> Path:
    """tests/js/node_modules: TypeScript (and the other tools of tests/js/package.json)."""
    return install_tools()
