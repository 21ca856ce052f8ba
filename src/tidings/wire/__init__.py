"""Wire formats: how messages, events, frames and commands look as bytes.

Each message is encoded at most once per format and the bytes are shared by
every connection that sends that format. Nothing here does I/O.
"""
