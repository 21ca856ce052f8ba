"""The asyncio server: connections, routing, and one module per technique."""

from tidings.server.app import Server

__all__ = ["Server"]
