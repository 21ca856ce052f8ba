"""The application ``asgi_vs_native.py`` runs under uvicorn: tidings' ASGI app, nothing else.

It is served at the root (no mount), so the load generator's paths work as
they are; a mount's routing costs per request, not per delivered message.
"""

from tidings import Server, Settings

server = Server(Settings(host="127.0.0.1", port=0), listen=False)
app = server.asgi  # its lifespan starts and stops the server
