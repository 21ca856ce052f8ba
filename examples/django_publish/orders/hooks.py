"""tidings' hooks over HTTP ([hooks] in tidings' config, docs/embedding.md): tidings asks
Django who a connecting user is, by the session cookie Django set at login, and whether
they may read a channel.

Run tidings with::

    TIDINGS_HOOKS_CONNECT_URL=http://127.0.0.1:8001/tidings/connect \\
    TIDINGS_HOOKS_SUBSCRIBE_URL=http://127.0.0.1:8001/tidings/subscribe \\
    TIDINGS_HOOKS_FORWARD_COOKIES=sessionid TIDINGS_HOOKS_SECRET=... tidings serve
"""

import hmac
import json
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth
from django.contrib.sessions.backends.db import SessionStore
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


def _refuse(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


def _call(request: HttpRequest) -> dict | JsonResponse:
    """The hook call's JSON, once the secret is checked; a refusal otherwise."""
    secret = request.headers.get("X-Tidings-Hook-Secret", "")
    if not settings.TIDINGS_HOOKS_SECRET or not hmac.compare_digest(
            secret, settings.TIDINGS_HOOKS_SECRET):
        return _refuse(403, "bad_secret", "not called by our tidings")
    return json.loads(request.body)


@csrf_exempt
@require_POST
def connect(request: HttpRequest) -> HttpResponse:
    """Who the user is: the Django user of the forwarded session cookie, or 401."""
    call = _call(request)
    if isinstance(call, JsonResponse):
        return call
    session_key = call["cookies"].get(settings.SESSION_COOKIE_NAME)
    # auth.get_user checks the session as a request would (expiry, a changed password).
    user = auth.get_user(SimpleNamespace(session=SessionStore(session_key)))
    if not user.is_authenticated:
        return _refuse(401, "login_required", "log in to the shop first")
    return JsonResponse({"user": user.get_username(), "info": {"staff": user.is_staff}})


@csrf_exempt
@require_POST
def subscribe(request: HttpRequest) -> HttpResponse:
    """``orders`` for every user; ``user:<name>`` for that user only."""
    call = _call(request)
    if isinstance(call, JsonResponse):
        return call
    channel, user = call["channel"], call["user"]
    if channel == "orders" or channel == f"user:{user}":
        return HttpResponse(status=204)
    return _refuse(403, "not_yours", f"{user} may not read {channel}")
