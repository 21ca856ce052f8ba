"""Channel templates: ``"prices:{symbol}"`` names a channel from a row's columns.

A template is text with ``{column}`` placeholders. Outside the placeholders
only channel-name characters are allowed (see :mod:`tidings.core.names`), so
a template is checked once, when it is installed, and again when the bridge
starts against the table's current columns. A row renders to a channel name
by replacing each placeholder with the column's value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tidings.core.names import CHANNEL_ALPHABET, check_channel
from tidings.errors import InvalidChannel, TidingsError, UsageError

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class RenderError(InvalidChannel):
    """A row cannot name a channel: a value is missing, null, or not allowed in a name.

    Bad input from the database, not a bad template (that is a
    :class:`UsageError`, raised when the template is parsed or checked against
    its table): the bridge skips the row's change and goes on.
    """


@dataclass(frozen=True, slots=True)
class ChannelTemplate:
    """A parsed template; build it with :meth:`parse`."""

    text: str
    #: The literal pieces around the placeholders: ``len(parts) == len(columns) + 1``.
    parts: tuple[str, ...]
    columns: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ChannelTemplate:
        """Parse ``text``; raise :class:`UsageError` if it cannot name valid channels."""
        parts: list[str] = []
        columns: list[str] = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            parts.append(text[position:match.start()])
            column = match[1]
            if not column:
                raise UsageError(f"channel template {text!r} has an empty placeholder {{}}")
            columns.append(column)
            position = match.end()
        parts.append(text[position:])
        for part in parts:
            if "{" in part or "}" in part:
                raise UsageError(f"channel template {text!r} has an unmatched brace")
        # Every placeholder becomes at least one character: check the literal text with "x".
        try:
            check_channel("x".join(parts))
        except TidingsError:
            raise UsageError(
                f"channel template {text!r} does not make a valid channel name: outside "
                f"the {{column}} placeholders use only {CHANNEL_ALPHABET}"
            ) from None
        return cls(text, tuple(parts), tuple(columns))

    def check_columns(self, table: str, columns: Iterable[str]) -> None:
        """Raise :class:`UsageError` if a placeholder names a column ``table`` lacks."""
        present = list(columns)
        missing = [column for column in self.columns if column not in present]
        if missing:
            raise UsageError(
                f"channel template {self.text!r} names column {missing[0]!r}, which table "
                f"{table} does not have (its columns: {', '.join(present)})"
            )

    def render(self, row: Mapping[str, Any]) -> str:
        """The channel name for ``row``; raise :class:`RenderError` if it has none."""
        pieces = [self.parts[0]]
        for column, part in zip(self.columns, self.parts[1:], strict=True):
            pieces.append(_text(row, column, self.text))
            pieces.append(part)
        name = "".join(pieces)
        try:
            return check_channel(name)
        except TidingsError as exc:
            raise RenderError(f"channel template {self.text!r}: {exc}") from None


def _text(row: Mapping[str, Any], column: str, template: str) -> str:
    if column not in row:
        raise RenderError(f"channel template {template!r}: the row has no column {column!r}")
    value = row[column]
    if value is None:
        raise RenderError(f"channel template {template!r}: column {column!r} is null")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise RenderError(f"channel template {template!r}: column {column!r} holds "
                      f"{type(value).__name__}, not text or a number")
