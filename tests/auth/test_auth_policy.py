"""The access policy (core/policy.py) and the [auth] config, without a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.core.policy import Claims, Policy, Refusal, Rule
from tidings.errors import UsageError
from tidings.settings import AuthSettings, Settings

RULES = {"public": Rule("anyone", "api_key"), "chat": Rule("token", "token"),
         "open": Rule("anyone", "anyone")}
POLICY = Policy(True, RULES, Rule())


def kind(refusal: Refusal | None) -> str | None:
    return None if refusal is None else f"{refusal.kind}/{refusal.code}"


def test_a_disabled_policy_allows_everything() -> None:
    policy = Policy(False, RULES, Rule())
    assert policy.may_subscribe("secret:x", None) is None
    assert policy.may_publish("public:x", None, has_api_key=False) is None


def test_subscribe_rules() -> None:
    alice = Claims("alice", None, ("chat:room1", "user:42"), ())
    assert kind(POLICY.may_subscribe("public:x", None)) is None
    assert kind(POLICY.may_subscribe("chat:room1", None)) == "unauthorized/token_required"
    assert kind(POLICY.may_subscribe("chat:room1", alice)) is None
    assert kind(POLICY.may_subscribe("chat:room2", alice)) == "forbidden/forbidden"
    # An unknown namespace (and a channel without one) follows the safe default: a token.
    assert kind(POLICY.may_subscribe("user:42", alice)) is None
    assert kind(POLICY.may_subscribe("user:43", alice)) == "forbidden/forbidden"
    assert kind(POLICY.may_subscribe("plain", None)) == "unauthorized/token_required"
    assert kind(POLICY.may_subscribe("plain", None, has_api_key=True)) is None


def test_publish_rules() -> None:
    alice = Claims("alice", None, ("*",), ("chat:*",))
    assert kind(POLICY.may_publish("public:x", None, False)) == "unauthorized/api_key_required"
    assert kind(POLICY.may_publish("public:x", alice, False)) == "forbidden/forbidden"
    assert kind(POLICY.may_publish("public:x", None, True)) is None
    assert kind(POLICY.may_publish("chat:a", None, False)) == "unauthorized/token_required"
    assert kind(POLICY.may_publish("chat:a", alice, False)) is None
    assert kind(POLICY.may_publish("chat:a", None, True)) is None
    assert kind(POLICY.may_publish("open:a", None, False)) is None
    assert kind(POLICY.may_publish("misc:a", alice, False)) == "forbidden/forbidden"
    assert kind(POLICY.may_publish("misc:a", None, True)) is None


@pytest.mark.parametrize(("pattern", "channel", "granted"), [
    ("chat:room1", "chat:room1", True),
    ("chat:room1", "chat:room10", False),
    ("chat:*", "chat:anything", True),
    ("chat:*", "chatter:x", False),
    ("user:4?", "user:42", True),
    ("user:[0-9]", "user:7", True),
    ("*", "whatever:at:all", True),
    ("Chat:*", "chat:a", False),  # case matters
])
def test_grants_are_names_or_fnmatch_patterns(pattern: str, channel: str, granted: bool) -> None:
    claims = Claims(None, None, (pattern,), (pattern,))
    assert claims.grants("subscribe", channel) is granted
    assert claims.grants("publish", channel) is granted
    assert not Claims().grants("subscribe", channel)


def test_default_rules_may_be_opened() -> None:
    policy = Policy(True, {}, Rule("anyone", "anyone"))
    assert policy.may_subscribe("x", None) is None
    assert policy.may_publish("x", None, False) is None


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="subscribe"):
        Rule("everyone", "api_key")
    with pytest.raises(ValueError, match="publish"):
        Rule("anyone", "nobody")
    with pytest.raises(UsageError):
        AuthSettings(default_publish="nobody")


# the config file ---------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return path


def test_no_auth_section_and_no_rules_leaves_everything_open(tmp_path: Path) -> None:
    settings = Settings.from_file(write(tmp_path, "[namespaces.prices]\nhistory_size = 5\n"))
    assert not settings.auth.enabled
    assert not settings.auth.policy().enabled
    assert not Settings().auth.enabled


def test_auth_section_and_namespace_rules(tmp_path: Path) -> None:
    settings = Settings.from_file(write(tmp_path, """
[auth]
api_key = "k"
jwt_hs256_secret = "s-0123456789abcdef0123456789abcdef"
jwt_public_key_file = "keys/public.pem"
jwt_algorithms = ["RS256"]
default_publish = "token"

[namespaces.public]
subscribe = "anyone"

[namespaces.prices]
history_size = 10
"""))
    auth = settings.auth
    assert auth.enabled and auth.configured
    assert auth.api_key == "k" and auth.jwt_hs256_secret == "s-0123456789abcdef0123456789abcdef"
    assert auth.jwt_public_key_file == str(tmp_path / "keys" / "public.pem")
    assert auth.jwt_algorithms == ("RS256",)
    # A namespace rule names what it changes; the rest comes from the defaults.
    assert auth.rules == {"public": Rule("anyone", "token")}
    policy = auth.policy()
    assert policy.rule("prices:x") == Rule("token", "token")
    assert settings.retention("prices:x").size == 10


def test_an_empty_auth_section_turns_the_safe_defaults_on(tmp_path: Path) -> None:
    settings = Settings.from_file(write(tmp_path, "[auth]\n"))
    policy = settings.auth.policy()
    assert policy.enabled
    assert kind(policy.may_subscribe("x", None)) == "unauthorized/token_required"
    assert kind(policy.may_publish("x", None, False)) == "unauthorized/api_key_required"


def test_a_namespace_rule_alone_turns_access_control_on(tmp_path: Path) -> None:
    settings = Settings.from_file(write(tmp_path, '[namespaces.open]\npublish = "anyone"\n'))
    policy = settings.auth.policy()
    assert policy.enabled
    assert policy.rule("open:a") == Rule("token", "anyone")
    assert policy.rule("other:a") == Rule("token", "api_key")


@pytest.mark.parametrize("text", [
    "[auth]\nsecret = 'x'\n",
    "[auth]\napi_key = 5\n",
    "[auth]\ndefault_subscribe = 'everyone'\n",
    "[auth]\ndefault_publish = 'nobody'\n",
    "[auth]\njwt_algorithms = 'RS256'\n",
    "auth = 3\n",
    "[namespaces.a]\nsubscribe = 'maybe'\n",
    "[namespaces.a]\npublish = 'server'\n",
])
def test_bad_auth_config_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(UsageError):
        Settings.from_file(write(tmp_path, text))
