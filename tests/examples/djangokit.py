"""examples/django_publish run as its README says: ``manage.py migrate``, then
``manage.py runserver`` on a port the kernel picked, in child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tidings.testing import UNIT

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_publish"
STARTED = re.compile(r"Starting development server at (http://127\.0\.0\.1:\d+)/")


async def manage(env: dict[str, str], *command: str) -> None:
    """Run ``manage.py COMMAND``; fail with its output if it fails."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "manage.py", *command, cwd=EXAMPLE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(30 * UNIT):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


@contextlib.asynccontextmanager
async def django(tidings_url: str, tmp_path: Path, users: tuple[str, ...] = (),
                 **variables: str) -> AsyncIterator[tuple[str, asyncio.StreamReader]]:
    """The example's development server on a port the kernel picked: its URL and its log.

    ``users`` are created with the password ``pw-<name>``; ``variables`` are more of its
    environment.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_", "DJANGO_"))}
    env.update(TIDINGS_URL=tidings_url, DJANGO_DATABASE=str(tmp_path / "db.sqlite3"),
               PYTHONUNBUFFERED="1", **variables)
    await manage(env, "migrate", "--verbosity", "0")
    for user in users:
        await manage({**env, "DJANGO_SUPERUSER_PASSWORD": f"pw-{user}"}, "createsuperuser",
                     "--noinput", "--username", user, "--email", f"{user}@example.com")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "manage.py", "runserver", "127.0.0.1:0", "--noreload", cwd=EXAMPLE,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(30 * UNIT):
            while (match := STARTED.search((await process.stdout.readline()).decode())) is None:
                assert not process.stdout.at_eof(), "manage.py runserver ended"
        yield match.group(1), process.stderr
    finally:
        process.terminate()
        async with asyncio.timeout(15 * UNIT):
            await process.communicate()


