"""One tidings.Publisher per process: it keeps its connection to tidings alive between
publishes and may be shared by threads (runserver, gunicorn --threads)."""

import functools

import tidings
from django.conf import settings


@functools.cache
def publisher() -> tidings.Publisher:
    return tidings.Publisher(settings.TIDINGS_URL, token=settings.TIDINGS_API_KEY, timeout=5)
