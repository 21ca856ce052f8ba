"""The application ``hooks_http.py`` runs under uvicorn: it answers tidings' connect and
subscribe hooks as fast as a Starlette application can (no database, one dict lookup)."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SESSIONS = {"s-bench": "bench-user"}


async def connect(request: Request) -> Response:
    call = await request.json()
    user = SESSIONS.get(call["cookies"].get("session", ""))
    if user is None:
        return JSONResponse({"error": "login_required"}, status_code=401)
    return JSONResponse({"user": user})


async def subscribe(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


app = Starlette(routes=[Route("/connect", connect, methods=["POST"]),
                        Route("/subscribe", subscribe, methods=["POST"])])
