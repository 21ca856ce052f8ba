"""The effective configuration: defaults, a config file, the environment and flags, layered.

One precedence, for ``tidings serve``, ``tidings demo`` and ``tidings config``:
flags over environment over file over defaults. Every setting of the config
file has an environment variable, its key in capitals after ``TIDINGS_`` and
its section (docs/operations.md):

========================================  ====================================
``[server] history_size``                 ``TIDINGS_HISTORY_SIZE``
``[auth] jwt_hs256_secret``               ``TIDINGS_AUTH_JWT_HS256_SECRET``
``[auth] api_key``                        ``TIDINGS_AUTH_API_KEY`` or ``TIDINGS_API_KEY``
``[hooks] connect_url``                   ``TIDINGS_HOOKS_CONNECT_URL``
``[namespaces.prices] history_ttl``       ``TIDINGS_NAMESPACES_PRICES_HISTORY_TTL``
``[namespaces]`` (all, as TOML)           ``TIDINGS_NAMESPACES='{Prices = {history_size = 10}}'``
``[[bridges]]`` (all, as TOML)            ``TIDINGS_BRIDGES='[{dsn = "postgresql://..."}]'``
the config file itself                    ``TIDINGS_CONFIG``
========================================  ====================================

Call :func:`load` with the file, the environment and the flags given; it
raises :class:`UsageError` listing every problem at once, each under the name
the operator used (the file's section and key, the variable, the flag). The
:class:`Loaded` it returns holds the :class:`Settings` and where each value
came from; :func:`describe` lists them with secrets masked (``tidings config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tidings.errors import UsageError
from tidings.settings import (
    AUTH_KEYS,
    HOOKS_KEYS,
    NAMESPACE_KEYS,
    NOT_SERVER_KEYS,
    AuthSettings,
    ConfigErrors,
    Settings,
    auth_default,
    hooks_default,
    read_config_file,
)

#: What every environment variable of a setting starts with.
PREFIX = "TIDINGS_"
#: The variable naming the config file (``--config`` wins over it).
CONFIG_VARIABLE = "TIDINGS_CONFIG"
#: ``TIDINGS_`` variables that are not server settings: read by other commands or tools.
NOT_SETTINGS = frozenset({
    "TIDINGS_URL",  # tidings publish / subscribe / bridge run
    "TIDINGS_TEST_UNIT",  # the test kit's time unit
    "TIDINGS_NO_SPEEDUPS",  # answer every request in Python (server/connection.py)
    CONFIG_VARIABLE,
})
#: A Kubernetes service named ``tidings`` gives every pod these variables ("service
#: links"); they describe that service, not this server's settings, and are ignored.
SERVICE_LINK = re.compile(r"TIDINGS_(SERVICE_[A-Z0-9_]+|PORT_\d+_[A-Z]+(_[A-Z]+)?)")
#: ``TIDINGS_PORT`` as a service link has this value (``tcp://10.0.0.7:8000``).
SERVICE_LINK_PORT = re.compile(r"(tcp|udp|sctp)://")
#: Shown instead of a secret.
MASK = "********"
#: Keys whose values are secrets, wherever they are; plus any key naming a secret,
#: password or token (see :func:`is_secret`).
SECRET_KEYS = frozenset({"api_key", "jwt_hs256_secret"})
#: Keys whose values are URLs or connection strings that may hold a password.
CONNECTION_KEYS = frozenset({"broker", "dsn"})

#: Where a value came from, for each source kind.
DEFAULT = "default"

#: A value's place: ``("server", "port")``, ``("auth", "api_key")``,
#: ``("namespaces", "prices", "history_size")``, ``("bridges",)``.
Key = tuple[str, ...]


def server_keys() -> list[str]:
    """The keys of ``[server]``: every :class:`Settings` field but the sections."""
    return [f.name for f in dataclasses.fields(Settings) if f.name not in NOT_SERVER_KEYS]


def variable_of(key: Key) -> str:
    """The environment variable of a setting: ``("server", "port")`` -> ``TIDINGS_PORT``."""
    if key[0] == "server":
        return PREFIX + key[1].upper()
    return PREFIX + "_".join(key).upper()


@dataclass(frozen=True)
class Loaded:
    """The effective settings, and where each value came from.

    ``sources`` maps each key that was not left at its default to ``"file PATH"``,
    ``"env NAME"`` or ``"flag --NAME"``; ``ignored`` lists the ``TIDINGS_`` variables
    that were not read, each with why.
    """

    settings: Settings
    sources: dict[Key, str]
    ignored: tuple[tuple[str, str], ...] = ()

    def source(self, key: Key) -> str:
        """Where the value at ``key`` came from (``"default"`` if nobody set it)."""
        return self.sources.get(key, DEFAULT)


class EnvironmentErrors(ConfigErrors):
    """Problems of values from the environment, each named by its variable."""

    def __init__(self, variables: Mapping[tuple[str, str], str]) -> None:
        super().__init__("environment")
        #: ``("[server]", "port")`` -> ``"TIDINGS_PORT"``: how the checks name a value.
        self.variables = variables

    def add(self, where: str, key: str, problem: str) -> None:
        variable = self.variables.get((where, key))
        if variable is None:
            super().add(where, key, problem)
        else:
            self.lines.append(f"{variable}{problem}")


def load(config: str | Path | None = None, environ: Mapping[str, str] | None = None,
         flags: Mapping[str, tuple[Any, str]] | None = None) -> Loaded:
    """The settings from defaults, ``config`` (a file; else ``$TIDINGS_CONFIG``), ``environ``
    and ``flags`` (setting -> ``(value, "--flag")``; ``None`` values are flags not given).

    Raises :class:`UsageError` naming every problem of the file and of the
    environment at once. Flags are applied as given: check them before.
    """
    environ = {} if environ is None else environ
    if config is None and environ.get(CONFIG_VARIABLE):
        config = environ[CONFIG_VARIABLE]
    file_table: dict[str, Any] = {}
    sources: dict[Key, str] = {}
    problems: list[str] = []
    if config is not None:
        file_table = read_config_file(config)
        try:
            Settings.from_file(config)  # checked alone: its problems named by section and key
        except UsageError as exc:
            problems.append(str(exc))
        _absolute_key_file(file_table, Path(config).parent)
        for key in _keys_of(file_table):
            sources[key] = f"file {config}"
    env_table, names, ignored, env_problems = environment_table(environ)
    problems.extend(env_problems)
    if env_table:
        _absolute_key_file(env_table, Path.cwd())
        try:
            Settings.from_config(env_table, EnvironmentErrors(names))
        except UsageError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("\n".join(problems))
    for key in _keys_of(env_table):
        whole = "TIDINGS_NAMESPACES" if key[0] == "namespaces" else variable_of(key)
        sources[key] = f"env {names.get(_where(key), whole)}"
    merged = _merge(file_table, env_table)
    settings = Settings.from_config(merged, ConfigErrors(config or "environment"))
    changes: dict[str, Any] = {}
    for name, (value, flag) in (flags or {}).items():
        if value is not None:
            changes[name] = value
            sources[("server", name)] = f"flag {flag}"
    return Loaded(settings.replace(**changes), sources, tuple(ignored))


def environment_table(environ: Mapping[str, str]) -> tuple[
        dict[str, Any], dict[tuple[str, str], str], list[tuple[str, str]], list[str]]:
    """The ``TIDINGS_`` variables of ``environ`` as a table shaped like a config file.

    Returns the table; how the checks of :meth:`Settings.from_config` name each value
    (``("[server]", "port")`` -> ``"TIDINGS_PORT"``); the variables ignored, with why;
    and the problems (an unknown variable, a value that does not parse).
    """
    table: dict[str, Any] = {}
    names: dict[tuple[str, str], str] = {}
    ignored: list[tuple[str, str]] = []
    problems: list[str] = []
    defaults = Settings()
    server = {PREFIX + key.upper(): key for key in server_keys()}
    auth = {PREFIX + "AUTH_" + key.upper(): key for key in AUTH_KEYS}
    hooks = {PREFIX + "HOOKS_" + key.upper(): key for key in HOOKS_KEYS}
    known = [*server, *auth, *hooks, "TIDINGS_API_KEY", "TIDINGS_NAMESPACES",
             "TIDINGS_NAMESPACES_<NAME>_<KEY>", "TIDINGS_BRIDGES"]
    for variable in sorted(environ):
        text = environ[variable]
        if not variable.startswith(PREFIX) or variable in NOT_SETTINGS:
            continue
        if SERVICE_LINK.fullmatch(variable) or (
                variable == "TIDINGS_PORT" and SERVICE_LINK_PORT.match(text)):
            ignored.append((variable, "a Kubernetes service link, not a setting"))
            continue
        try:
            if variable in server:
                key = server[variable]
                _put(table, ("server", key), _parse(text, getattr(defaults, key)), variable,
                     names)
            elif variable in auth or variable == "TIDINGS_API_KEY":
                key = auth.get(variable, "api_key")
                _put(table, ("auth", key), _parse(text, auth_default(key)), variable, names)
            elif variable in hooks:
                key = hooks[variable]
                _put(table, ("hooks", key), _parse(text, hooks_default(key)), variable, names)
            elif variable == "TIDINGS_NAMESPACES":
                value = _toml_value(text, "a TOML table such as {prices = {history_size = 10}}")
                table["namespaces"] = {**value, **table.get("namespaces", {})} if isinstance(
                    value, dict) else value
                names[("", "namespaces")] = variable
            elif variable.startswith("TIDINGS_NAMESPACES_"):
                name, key = _namespace_key(variable)
                default: Any = getattr(defaults, key, "")
                namespaces = table.setdefault("namespaces", {})
                if not isinstance(namespaces, dict):
                    raise ValueError(": TIDINGS_NAMESPACES is not a table")
                namespaces.setdefault(name, {})[key] = _parse(text, default)
                names[(f"[namespaces.{name}]", key)] = variable
            elif variable == "TIDINGS_BRIDGES":
                table["bridges"] = _toml_value(
                    text, 'a TOML array such as [{dsn = "postgresql://app@db/shop"}]')
                names[("", "bridges")] = variable
            else:
                problems.append(_not_a_setting(variable, known))
        except ValueError as exc:
            problems.append(f"{variable}{exc}")
    if "TIDINGS_API_KEY" in environ and "TIDINGS_AUTH_API_KEY" in environ:
        problems.append("TIDINGS_API_KEY and TIDINGS_AUTH_API_KEY are both set; set one")
    return table, names, ignored, problems


def _not_a_setting(variable: str, known: list[str]) -> str:
    """The problem of a ``TIDINGS_`` variable that names no setting: the nearest one if
    it looks like a typo, and what to do either way."""
    # Names compared without the prefix they share, which would make any two look alike.
    near = difflib.get_close_matches(variable[len(PREFIX):],
                                     [name[len(PREFIX):] for name in known], n=1, cutoff=0.75)
    hint = f" (did you mean {PREFIX}{near[0]}?)" if near else ""
    return (f"{variable} is not a setting{hint}: every TIDINGS_ variable is read as one; "
            "rename or unset it (docs/operations.md lists them)")


def _put(table: dict[str, Any], key: Key, value: Any, variable: str,
         names: dict[tuple[str, str], str]) -> None:
    table.setdefault(key[0], {})[key[1]] = value
    names[(f"[{key[0]}]", key[1])] = variable


def _namespace_key(variable: str) -> tuple[str, str]:
    """``TIDINGS_NAMESPACES_PRICES_HISTORY_TTL`` -> ``("prices", "history_ttl")``."""
    rest = variable.removeprefix("TIDINGS_NAMESPACES_")
    for key in sorted(NAMESPACE_KEYS, key=len, reverse=True):
        suffix = "_" + key.upper()
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return rest[:-len(suffix)].lower(), key
    raise ValueError(f" is not TIDINGS_NAMESPACES_<NAME>_<KEY> with a key of "
                     f"{', '.join(k.upper() for k in NAMESPACE_KEYS)}")


def _parse(text: str, default: Any) -> Any:
    """A variable's text as the type of the setting's ``default``; raise ``ValueError``."""
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f" must be true or false, not {text!r}")
    if isinstance(default, tuple):
        if text.strip().startswith("["):
            return _toml_value(text, 'a list: a,b or ["a", "b"]')
        return [item.strip() for item in text.split(",") if item.strip()]
    if isinstance(default, int | float):
        try:
            return int(text)
        except ValueError:
            pass
        if isinstance(default, int):
            raise ValueError(f" must be an integer, not {text!r}")
        try:
            return float(text)
        except ValueError:
            raise ValueError(f" must be a number, not {text!r}") from None
    return text


def _toml_value(text: str, kind: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f" must be {kind} ({exc})") from None


def _absolute_key_file(table: dict[str, Any], base: Path) -> None:
    """Make ``[auth] jwt_public_key_file`` absolute: relative to the file, or to the
    working directory for the environment's."""
    auth = table.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("jwt_public_key_file"), str):
        auth["jwt_public_key_file"] = str((base / auth["jwt_public_key_file"]).absolute())


def _keys_of(table: Mapping[str, Any]) -> Iterator[Key]:
    """The keys a table sets (a whole ``[[bridges]]`` list is one key)."""
    for section, values in table.items():
        if section == "bridges" or not isinstance(values, dict):
            yield (section,)
        elif section == "namespaces":
            for name, keys in values.items():
                for key in keys if isinstance(keys, dict) else ():
                    yield ("namespaces", name, key)
        else:
            for key in values:
                yield (section, key)


def _where(key: Key) -> tuple[str, str]:
    """How the checks name ``key``: ``("[server]", "port")``."""
    if key[0] == "namespaces" and len(key) == 3:
        return f"[namespaces.{key[1]}]", key[2]
    if len(key) == 1:
        return "", key[0]
    return f"[{key[0]}]", key[1]


def _merge(file_table: Mapping[str, Any], env_table: Mapping[str, Any]) -> dict[str, Any]:
    """The file's table with the environment's values over it, key by key."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v
                              for k, v in file_table.items()}
    for section, values in env_table.items():
        if section == "namespaces" and isinstance(merged.get(section), dict):
            for name, keys in values.items():
                merged[section][name] = {**merged[section].get(name, {}), **keys}
        elif isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


# describing it ---------------------------------------------------------------------


def is_secret(key: str) -> bool:
    """Whether a key's value is a secret, never shown: the API key, an HS256 secret, and
    any key that names a secret, a password or a token."""
    return key in SECRET_KEYS or any(word in key for word in ("secret", "password", "token"))


def mask_connection(text: str) -> str:
    """A URL or libpq connection string with its password replaced by :data:`MASK`."""
    text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", rf"\g<1>{MASK}", text)
    parts = urlsplit(text)
    if parts.password:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    return text


def shown(key: str, value: Any) -> Any:
    """``value`` as ``tidings config`` shows it: secrets masked."""
    if value is None:
        return None
    if is_secret(key):
        return MASK
    if key in CONNECTION_KEYS and isinstance(value, str):
        return mask_connection(value)
    return value


def rows(loaded: Loaded) -> Iterator[tuple[Key, Any, str]]:
    """Every value of the effective configuration (secrets masked), with its source."""
    settings = loaded.settings
    for key in server_keys():
        value = getattr(settings, key)
        yield ("server", key), shown(key, value), loaded.source(("server", key))
    auth = settings.auth
    for key in AUTH_KEYS:
        value = getattr(auth, key)
        if value is None or value == ():
            value = None
        yield ("auth", key), shown(key, value), loaded.source(("auth", key))
    for key in HOOKS_KEYS:
        value = getattr(settings.hooks, key)
        if value in (None, (), ""):
            value = None
        yield ("hooks", key), shown(key, value), loaded.source(("hooks", key))
    rules = auth.rules
    for name, retention in settings.namespaces.items():
        values: dict[str, Any] = {"history_size": retention.size, "history_ttl": retention.ttl,
                                  "idempotency_window": retention.idempotency_window}
        if name in rules:
            values.update(subscribe=rules[name].subscribe, publish=rules[name].publish)
        for key, value in values.items():
            source = loaded.sources.get(("namespaces", name, key))
            if source is None:
                source = (f"[server] {key}" if key in ("history_size", "history_ttl",
                                                       "idempotency_window")
                          else f"[auth] default_{key}")
            yield ("namespaces", name, key), value, source
    source = loaded.source(("bridges",))
    for number, bridge in enumerate(settings.bridges):
        yield ("bridges", str(number), "dsn"), mask_connection(bridge.dsn), source
        yield ("bridges", str(number), "schema"), bridge.schema, source
        yield ("bridges", str(number), "tables"), [
            {"table": table, "channel": channel} for table, channel in bridge.tables], source


def describe_json(loaded: Loaded) -> str:
    """The effective configuration as JSON: ``{section: {key: {value, source}}}``."""
    out: dict[str, Any] = {"access_control": _access_control(loaded.settings.auth)}
    for key, value, source in rows(loaded):
        section = out.setdefault(key[0], {})
        for part in key[1:-1]:
            section = section.setdefault(part, {})
        section[key[-1]] = {"value": _plain(value), "source": source}
    out["ignored"] = {name: why for name, why in loaded.ignored}
    return json.dumps(out, indent=2)


def describe(loaded: Loaded) -> str:
    """The effective configuration as a config file, each value's source in a comment,
    secrets masked; a value left unset is a comment too."""
    lines = ["# The effective configuration of tidings: flags over environment over file "
             "over defaults.",
             f"# Access control: {_access_control(loaded.settings.auth)}."]
    section = None
    for key, value, source in rows(loaded):
        head = _table(key)
        if head != section:
            section = head
            lines.extend(["", head])
        if value is None:
            lines.append(f"# {key[-1]} = (not set)")
            continue
        lines.append(f"{key[-1]} = {_toml(value)}".ljust(48) + f"  # {source}")
    for name, why in loaded.ignored:
        lines.append(f"# ignored: {name} ({why})")
    return "\n".join(lines) + "\n"


def _access_control(auth: AuthSettings) -> str:
    return "on" if auth.enabled else "off (anyone may read and publish)"


def _table(key: Key) -> str:
    if key[0] == "namespaces":
        return f"[namespaces.{_toml_key(key[1])}]"
    if key[0] == "bridges":
        return f"[[bridges]]  # {int(key[1]) + 1}"
    return f"[{key[0]}]"


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _toml(value: Any) -> str:
    """``value`` written as TOML (strings, numbers, lists and tables of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
