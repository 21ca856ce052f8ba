"""A minimal Django project whose orders are published to a separate tidings server,
and which tells tidings who its users are (hooks over HTTP, orders/hooks.py).

Only what the example needs: one app (``orders``), Django's users and sessions, SQLite.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Development only: set DJANGO_SECRET_KEY and DJANGO_DEBUG=0 in production.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "orders.apps.OrdersConfig",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE", BASE_DIR / "db.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# Where tidings runs (the variable `tidings publish` reads too), and its API key if
# access control is on (docs/security.md).
TIDINGS_URL = os.environ.get("TIDINGS_URL", "http://127.0.0.1:8000")
TIDINGS_API_KEY = os.environ.get("TIDINGS_API_KEY")
# The secret tidings sends with each hook call ([hooks] secret, TIDINGS_HOOKS_SECRET).
TIDINGS_HOOKS_SECRET = os.environ.get("TIDINGS_HOOKS_SECRET", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"orders": {"handlers": ["console"], "level": "INFO"}},
}
