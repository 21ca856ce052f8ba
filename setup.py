"""The one thing pyproject.toml cannot say: tidings' optional C extension.

``tidings.server.speedups`` answers the most frequent request (a poll repeated with
nothing new) without entering the interpreter (src/tidings/server/speedups.c). It is
optional: where it cannot be built (no C compiler), pip installs tidings without it
and the same requests are answered in Python.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("tidings.server.speedups", ["src/tidings/server/speedups.c"], optional=True),
])
