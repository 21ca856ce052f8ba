"""Sessions without I/O: the reader at a cursor that every technique drives.

``reader.py`` holds a subscription's positions, backlog and gaps;
``batch.py`` reads several logs from one cursor. The drivers (server/poll,
longpoll, sse, websocket) own the sockets. Like ``core/`` and ``wire/``, this
package imports no asyncio and no sockets (a test checks).
"""
