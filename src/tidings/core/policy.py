"""Who may subscribe to and publish on a channel: namespace rules and token grants.

No I/O and no cryptography here: :mod:`tidings.server.auth` verifies tokens
and hands the decision functions the :class:`Claims` it found (or ``None``
for a caller without a token) and whether the caller gave the server's API key.

A rule belongs to a namespace (the part of a channel name before ``:``)::

    subscribe  "anyone"   no token needed
               "token"    a token whose ``channels.subscribe`` grants the channel
    publish    "api_key"  only the server's API key
               "token"    the API key, or a token whose ``channels.publish`` grants it
               "anyone"   no credentials needed

The API key may do everything. A :class:`Policy` built with ``enabled=False``
(no ``[auth]`` section and no rule in the config) allows everything: the
behaviour of a server without auth configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from tidings.core.names import namespace_of

SUBSCRIBE_RULES = ("anyone", "token")
PUBLISH_RULES = ("api_key", "token", "anyone")

#: The rule of a channel whose namespace has none, once auth is configured.
SAFE_DEFAULT_SUBSCRIBE = "token"
SAFE_DEFAULT_PUBLISH = "api_key"


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may subscribe and who may publish in one namespace."""

    subscribe: str = SAFE_DEFAULT_SUBSCRIBE
    publish: str = SAFE_DEFAULT_PUBLISH

    def __post_init__(self) -> None:
        if self.subscribe not in SUBSCRIBE_RULES:
            raise ValueError(f"subscribe must be one of {', '.join(SUBSCRIBE_RULES)}, "
                             f"not {self.subscribe!r}")
        if self.publish not in PUBLISH_RULES:
            raise ValueError(f"publish must be one of {', '.join(PUBLISH_RULES)}, "
                             f"not {self.publish!r}")


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says: who holds it, until when, and which channels it grants.

    ``subscribe`` and ``publish`` hold channel names or :func:`fnmatch.fnmatchcase`
    patterns (``"user:42"``, ``"prices:*"``, ``"*"``). ``expires`` is the ``exp``
    claim in Unix seconds (``None``: the token does not expire).
    """

    sub: str | None = None
    expires: float | None = None
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    #: The ``info`` claim, any JSON value: what presence shows of this reader beside ``sub``.
    info: object = field(default=None, compare=False)
    #: ``channels.read``: channels a ``GET /subscribe`` without ``channel`` reads (exact names).
    read: tuple[str, ...] = ()

    def grants(self, action: Literal["subscribe", "publish"], channel: str) -> bool:
        patterns = self.subscribe if action == "subscribe" else self.publish
        return any(fnmatchcase(channel, pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an action is refused.

    ``kind`` is ``"unauthorized"`` (credentials are missing: answer 401) or
    ``"forbidden"`` (the credentials given do not allow it: answer 403).
    """

    kind: Literal["unauthorized", "forbidden"]
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    """Namespace rules plus the rule for namespaces without one."""

    enabled: bool = False
    rules: Mapping[str, Rule] = field(default_factory=dict)
    default: Rule = Rule()

    def rule(self, channel: str) -> Rule:
        return self.rules.get(namespace_of(channel), self.default)

    def may_subscribe(self, channel: str, claims: Claims | None,
                      has_api_key: bool = False) -> Refusal | None:
        """``None`` if the caller may subscribe to ``channel``, else the :class:`Refusal`."""
        if not self.enabled or has_api_key or self.rule(channel).subscribe == "anyone":
            return None
        if claims is None:
            return Refusal("unauthorized", "token_required",
                           f"subscribing to {channel!r} needs a token")
        if claims.grants("subscribe", channel):
            return None
        return Refusal("forbidden", "forbidden",
                       f"the token does not grant subscribing to {channel!r}")

    def may_publish(self, channel: str, claims: Claims | None,
                    has_api_key: bool) -> Refusal | None:
        """``None`` if the caller may publish on ``channel``, else the :class:`Refusal`."""
        if not self.enabled or has_api_key:
            return None
        rule = self.rule(channel).publish
        if rule == "anyone":
            return None
        if rule == "api_key":
            if claims is None:
                return Refusal("unauthorized", "api_key_required",
                               f"publishing on {channel!r} needs the server's API key")
            return Refusal("forbidden", "forbidden",
                           f"only the server's API key may publish on {channel!r}")
        if claims is None:
            return Refusal("unauthorized", "token_required",
                           f"publishing on {channel!r} needs a token or the API key")
        if claims.grants("publish", channel):
            return None
        return Refusal("forbidden", "forbidden",
                       f"the token does not grant publishing on {channel!r}")

    def may_subscribe_all(self, channels: Sequence[str], claims: Claims | None,
                          has_api_key: bool = False) -> Refusal | None:
        """The first refusal among ``channels``, or ``None``."""
        for channel in channels:
            refusal = self.may_subscribe(channel, claims, has_api_key)
            if refusal is not None:
                return refusal
        return None
