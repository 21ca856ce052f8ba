import json

from django.contrib import auth
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from orders.models import Order


def _json(request: HttpRequest) -> dict | None:
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


@csrf_exempt  # an API called by scripts in this example; keep CSRF for browser forms
@require_POST
def orders(request: HttpRequest) -> JsonResponse:
    """``POST /orders/ {"item": "book", "quantity": 2}``: a new order, published."""
    body = _json(request)
    if body is None or not isinstance(body.get("item"), str) or not body["item"]:
        return JsonResponse({"error": "an order is {\"item\": str, \"quantity\": int}"},
                            status=400)
    quantity = body.get("quantity", 1)
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
        return JsonResponse({"error": "quantity must be a positive integer"}, status=400)
    order = Order.objects.create(item=body["item"][:100], quantity=quantity)
    return JsonResponse(order.as_json(), status=201)


@csrf_exempt
@require_POST
def order_state(request: HttpRequest, order_id: int) -> JsonResponse:
    """``POST /orders/7/state {"state": "paid"}``: the order's new state, published."""
    order = get_object_or_404(Order, pk=order_id)
    body = _json(request)
    states = [state for state, _ in Order.STATES]
    if body is None or body.get("state") not in states:
        return JsonResponse({"error": f"state must be one of {states}"}, status=400)
    order.state = body["state"]
    order.save()
    return JsonResponse(order.as_json())


@csrf_exempt
@require_POST
def login_view(request: HttpRequest) -> JsonResponse:
    """``POST /login {"username": ..., "password": ...}``: Django's session cookie, which
    tidings' connect hook reads (orders/hooks.py)."""
    body = _json(request) or {}
    user = auth.authenticate(request, username=body.get("username"),
                             password=body.get("password"))
    if user is None:
        return JsonResponse({"error": "wrong username or password"}, status=401)
    auth.login(request, user)
    return JsonResponse({"user": user.get_username()})
