"""The core of tidings: channel logs, cursors, retention, gaps and fan-out bookkeeping.

Nothing in this package performs I/O or imports asyncio; a test enforces it.
Everything here is driven by plain method calls and an explicit clock value.
"""
