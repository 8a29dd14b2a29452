"""Alert rules and notification channels: the validated configuration, its JSON and its place in
the store (meta key :data:`CONFIG_KEY`).

The JSON (and TOML) shape is two lists::

    {"rules": [{"id": "fridge-offline", "kind": "offline", "devices": ["shellyplug*"],
                "for_s": 300, "notify": ["ops-hook"]}, ...],
     "channels": [{"name": "ops-hook", "kind": "webhook", "url": "https://...",
                   "secret": "whsec_..."}, ...]}

:func:`parse_config` is strict: an unknown key, a value of the wrong type, a negative number, a
rule notifying a channel that does not exist, two rules with one id or two channels with one
name, a URL that is not ``http(s)://host...``: each raises :class:`ConfigError` naming the rule
or channel and the key. See docs/alerts.md.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets as _secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from kilowatch.errors import ConfigError
from kilowatch.store.protocol import Store

CONFIG_KEY = "alerts.config"
"""Store meta key of the alerts configuration (written by the web page and ``kilowatch alerts
set``, read by the service every evaluation)."""
REDACTED = "***"
"""What :func:`config_to_json` shows instead of a secret."""

RULE_KINDS = ("offline", "power_above", "daily_energy_above", "firmware_failed")
CHANNEL_KINDS = ("webhook", "email", "ntfy")
SMTP_SECURITY = ("none", "starttls", "tls")
SECRET_FIELDS = ("secret", "token", "password")
"""Channel fields that hold secrets: redacted in JSON unless asked."""
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_BYTES = (24, 64)
"""Standard Webhooks: a signing secret is 24 to 64 random bytes, base64 after ``whsec_``."""
DEFAULT_FOR_S = {"offline": 300, "power_above": 60, "daily_energy_above": 0, "firmware_failed": 0}
"""``for_s`` when a rule does not say: an offline device's grace period, how long power must
stay above the threshold; the other two fire at once."""
MAX_RULES = 500
MAX_CHANNELS = 50
MAX_LIST = 200
"""Most device patterns, notify names or recipients in one rule or channel."""

_SLUG = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule. Which fields matter depends on ``kind``:

    - ``offline``: the device says it is offline (LWT, ``online`` false) or has been silent for
      longer than ``for_s``; it is *pending* for the grace period ``for_s``, then *firing*;
      *resolved* when it is back.
    - ``power_above``: the latest power of ``channel`` (``None``: the device's total) stays above
      ``threshold_w`` for ``for_s`` seconds; resolved once it stays at or below for
      ``min(for_s, 60)`` seconds.
    - ``daily_energy_above``: the device's energy of the site's local day is above ``budget_wh``;
      resolved at the next local day.
    - ``firmware_failed``: the device reported ``ota_error``; resolved by an ``ota_success``.

    ``devices`` are glob patterns over device ids (``()``: every device); ``repeat_s`` notifies
    again while firing (``None``: never); ``notify`` names channels."""

    id: str
    kind: str
    devices: tuple[str, ...] = ()
    channel: str | None = None
    threshold_w: float | None = None
    for_s: int = 0
    budget_wh: float | None = None
    repeat_s: int | None = None
    notify: tuple[str, ...] = ()
    enabled: bool = True
    name: str = ""

    @property
    def title(self) -> str:
        """The rule's name, else its id."""
        return self.name or self.id


@dataclass(frozen=True, slots=True)
class Channel:
    """Where notifications go: ``webhook`` (``url``, ``secret`` signs per Standard Webhooks),
    ``email`` (SMTP: ``smtp_host``, ``smtp_port``, ``smtp_security``, ``username``,
    ``password``, ``sender``, ``recipients``) or ``ntfy`` (``url`` of the topic, bearer
    ``token``)."""

    name: str
    kind: str
    url: str | None = None
    secret: str | None = None
    token: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str = "starttls"
    username: str | None = None
    password: str | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    rules: tuple[Rule, ...] = ()
    channels: tuple[Channel, ...] = ()

    def channel(self, name: str) -> Channel | None:
        return next((c for c in self.channels if c.name == name), None)

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


_RULE_KEYS = frozenset(f.name for f in fields(Rule))
_CHANNEL_KEYS = frozenset(f.name for f in fields(Channel))
_KIND_KEYS = {
    "offline": frozenset(),
    "power_above": frozenset({"threshold_w", "channel"}),
    "daily_energy_above": frozenset({"budget_wh"}),
    "firmware_failed": frozenset(),
}
_CHANNEL_KIND_KEYS = {
    "webhook": frozenset({"url", "secret"}),
    "ntfy": frozenset({"url", "token"}),
    "email": frozenset(
        {"smtp_host", "smtp_port", "smtp_security", "username", "password", "sender", "recipients"}
    ),
}


def new_webhook_secret() -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; :class:`ConfigError` if it is not one."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ConfigError("a webhook secret starts with whsec_ (whsec_ and base64 of 24-64 bytes)")
    try:
        key = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("a webhook secret is whsec_ followed by base64") from None
    low, high = WEBHOOK_SECRET_BYTES
    if not low <= len(key) <= high:
        raise ConfigError(f"a webhook secret holds {low} to {high} bytes, this one {len(key)}")
    return key


# -- parsing ---------------------------------------------------------------------------------------


class _Fields:
    """Typed access to one rule's or channel's mapping; errors name ``where`` and the key."""

    def __init__(self, where: str, data: Mapping[str, Any]) -> None:
        self.where = where
        self.data = data

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key} {what}")

    def text(self, key: str, *, default: str | None = None) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"must be text, got {_shown(value)}")
        if len(value) > 2000 or any(ord(c) < 32 for c in value):
            raise self.fail(key, "must be one line of at most 2000 characters")
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise self.fail(key, f"must be a number, got {_shown(value)}")
        if value < 0 or value > 1e12:
            raise self.fail(key, f"must be between 0 and 1e12, got {value}")
        return float(value)

    def seconds(self, key: str, *, default: int | None) -> int | None:
        return self.whole(key, default=default, most=366 * 86400, unit=" seconds")

    def whole(self, key: str, *, default: int | None, most: int, unit: str = "") -> int | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(
                key, f"must be a whole number{unit and ' of' + unit}, got {_shown(value)}"
            )
        if not 0 <= value <= most:
            raise self.fail(key, f"must be between 0 and {most}{unit}, got {value}")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, ())
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise self.fail(key, f"must be a list of text, got {_shown(value)}")
        if len(value) > MAX_LIST:
            raise self.fail(key, f"holds {len(value)} items; at most {MAX_LIST}")
        out: list[str] = []
        for item in value:
            if not isinstance(item, str) or not item.strip() or any(ord(c) < 32 for c in item):
                raise self.fail(key, f"must hold non-empty text, got {_shown(item)}")
            out.append(item.strip())
        return tuple(out)

    def flag(self, key: str, *, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_shown(value)}")
        return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _slug(f: _Fields, key: str) -> str:
    value = f.text(key)
    if value is None:
        raise f.fail(key, "is required")
    if not _SLUG.fullmatch(value):
        raise f.fail(
            key,
            f"{value!r} must be a slug: lower-case letters, digits, '-', '_', '.' (at most 64)",
        )
    return value


def _url(f: _Fields, key: str) -> str:
    value = f.text(key)
    if value is None:
        raise f.fail(key, "is required")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise f.fail(key, f"{value!r} must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise f.fail(key, f"{value!r} has an invalid port") from None
    return value


def parse_rule(data: Any, index: int) -> Rule:
    """One rule from its JSON; :class:`ConfigError` naming the rule and key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"rules[{index}] must be an object, got {_shown(data)}")
    where = f"rule {data['id']!r}" if isinstance(data.get("id"), str) else f"rules[{index}]"
    f = _Fields(where, data)
    for key in data:
        if key not in _RULE_KEYS:
            raise f.fail(str(key), f"is not a known key (known: {', '.join(sorted(_RULE_KEYS))})")
    rule_id = _slug(f, "id")
    kind = f.text("kind")
    if kind not in RULE_KINDS:
        raise f.fail("kind", f"must be one of {', '.join(RULE_KINDS)}, got {_shown(kind)}")
    for key in ("threshold_w", "channel", "budget_wh"):
        if data.get(key) is not None and key not in _KIND_KEYS[kind]:
            raise f.fail(key, f"does not apply to a {kind} rule")
    threshold = f.number("threshold_w")
    budget = f.number("budget_wh")
    if kind == "power_above" and threshold is None:
        raise f.fail("threshold_w", "is required for a power_above rule (watts)")
    if kind == "daily_energy_above" and budget is None:
        raise f.fail("budget_wh", "is required for a daily_energy_above rule (Wh per local day)")
    for_s = f.seconds("for_s", default=DEFAULT_FOR_S[kind])
    repeat = f.seconds("repeat_s", default=None)
    if repeat == 0:
        raise f.fail("repeat_s", "must be at least 1 second, or null for never")
    notify = f.texts("notify")
    if len(set(notify)) != len(notify):
        raise f.fail("notify", "names a channel twice")
    return Rule(
        id=rule_id,
        kind=kind,
        devices=f.texts("devices"),
        channel=f.text("channel"),
        threshold_w=threshold,
        for_s=for_s or 0,
        budget_wh=budget,
        repeat_s=repeat,
        notify=notify,
        enabled=f.flag("enabled", default=True),
        name=f.text("name", default="") or "",
    )


def parse_channel(data: Any, index: int, previous: Channel | None = None) -> Channel:
    """One channel from its JSON; ``previous`` (the stored channel of that name) supplies the
    secrets given as :data:`REDACTED`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"channels[{index}] must be an object, got {_shown(data)}")
    name_given = data.get("name")
    where = f"channel {name_given!r}" if isinstance(name_given, str) else f"channels[{index}]"
    f = _Fields(where, data)
    for key in data:
        if key not in _CHANNEL_KEYS:
            raise f.fail(
                str(key), f"is not a known key (known: {', '.join(sorted(_CHANNEL_KEYS))})"
            )
    name = _slug(f, "name")
    kind = f.text("kind")
    if kind not in CHANNEL_KINDS:
        raise f.fail("kind", f"must be one of {', '.join(CHANNEL_KINDS)}, got {_shown(kind)}")
    for key in _CHANNEL_KEYS - {"name", "kind"} - _CHANNEL_KIND_KEYS[kind]:
        if data.get(key) not in (None, (), []):
            raise f.fail(key, f"does not apply to a {kind} channel")
    secrets = {key: _secret(f, key, previous) for key in SECRET_FIELDS}
    if kind == "webhook":
        if secrets["secret"] is None:
            raise f.fail("secret", "is required: whsec_ and the base64 of 24-64 random bytes")
        try:
            webhook_key(secrets["secret"])
        except ConfigError as err:
            raise f.fail("secret", f"is invalid: {err}") from None
        return Channel(name=name, kind=kind, url=_url(f, "url"), secret=secrets["secret"])
    if kind == "ntfy":
        return Channel(name=name, kind=kind, url=_url(f, "url"), token=secrets["token"])
    return _email_channel(f, name, secrets["password"])


def _secret(f: _Fields, key: str, previous: Channel | None) -> str | None:
    value = f.text(key)
    if value != REDACTED:
        return value or None
    kept: str | None = getattr(previous, key) if previous is not None else None
    if kept is None:
        raise f.fail(key, f"is {REDACTED!r} but no {key} is stored for this channel: give it")
    return kept


def _email_channel(f: _Fields, name: str, password: str | None) -> Channel:
    host = f.text("smtp_host")
    if not host or not host.strip():
        raise f.fail("smtp_host", "is required for an email channel")
    security = f.text("smtp_security", default="starttls") or "starttls"
    if security not in SMTP_SECURITY:
        raise f.fail("smtp_security", f"must be one of {', '.join(SMTP_SECURITY)}")
    port = f.whole("smtp_port", default=None, most=65535)
    if port == 0:
        raise f.fail("smtp_port", f"must be between 1 and 65535, got {port}")
    if port is None:
        port = {"none": 25, "starttls": 587, "tls": 465}[security]
    sender = f.text("sender")
    if not sender or not _ADDRESS.fullmatch(sender):
        raise f.fail("sender", f"must be an e-mail address, got {_shown(sender)}")
    recipients = f.texts("recipients")
    if not recipients:
        raise f.fail("recipients", "must name at least one e-mail address")
    for address in recipients:
        if not _ADDRESS.fullmatch(address):
            raise f.fail("recipients", f"{address!r} is not an e-mail address")
    username = f.text("username")
    if password is not None and not username:
        raise f.fail("password", "is given without a username")
    return Channel(
        name=name,
        kind="email",
        smtp_host=host.strip(),
        smtp_port=port,
        smtp_security=security,
        username=username or None,
        password=password,
        sender=sender,
        recipients=recipients,
    )


def parse_config(data: Any, *, previous: AlertsConfig | None = None) -> AlertsConfig:
    """The validated configuration of ``data`` (``{"rules": [...], "channels": [...]}``, both
    optional); :class:`ConfigError` naming the rule or channel and the key.

    Secrets given as :data:`REDACTED` (``"***"``, what :func:`config_to_json` shows by default)
    keep the secret stored for the channel *of the same name* in ``previous`` (pass the stored
    configuration, :func:`load_config`): a page that shows the redacted configuration can send it
    back edited without knowing the secrets. ``"***"`` for a channel ``previous`` does not have
    with that secret is an error; ``null`` or ``""`` removes the secret.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"the alerts configuration must be an object, got {_shown(data)}")
    unknown = set(data) - {"rules", "channels"}
    if unknown:
        raise ConfigError(
            f"alerts configuration: unknown key {sorted(map(str, unknown))[0]!r} "
            "(known: channels, rules)"
        )
    raw_rules, raw_channels = data.get("rules", []), data.get("channels", [])
    for key, value, most in (
        ("rules", raw_rules, MAX_RULES),
        ("channels", raw_channels, MAX_CHANNELS),
    ):
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            raise ConfigError(f"alerts configuration: {key} must be a list, got {_shown(value)}")
        if len(value) > most:
            raise ConfigError(f"alerts configuration: {len(value)} {key}; at most {most}")
    channels: list[Channel] = []
    for i, raw in enumerate(raw_channels):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        before = previous.channel(name) if previous is not None and isinstance(name, str) else None
        channel = parse_channel(raw, i, before)
        if any(c.name == channel.name for c in channels):
            raise ConfigError(f"channel {channel.name!r}: name is used by two channels")
        channels.append(channel)
    names = {c.name for c in channels}
    rules: list[Rule] = []
    for i, raw in enumerate(raw_rules):
        rule = parse_rule(raw, i)
        if any(r.id == rule.id for r in rules):
            raise ConfigError(f"rule {rule.id!r}: id is used by two rules")
        for name in rule.notify:
            if name not in names:
                known = ", ".join(sorted(names)) or "none configured"
                raise ConfigError(
                    f"rule {rule.id!r}: notify names unknown channel {name!r} ({known})"
                )
        rules.append(rule)
    return AlertsConfig(rules=tuple(rules), channels=tuple(channels))


# -- JSON and the store ------------------------------------------------------------------------


def rule_to_json(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rule.id,
        "kind": rule.kind,
        "name": rule.name,
        "enabled": rule.enabled,
        "devices": list(rule.devices),
        "for_s": rule.for_s,
        "repeat_s": rule.repeat_s,
        "notify": list(rule.notify),
    }
    if rule.kind == "power_above":
        out["threshold_w"] = rule.threshold_w
        out["channel"] = rule.channel
    if rule.kind == "daily_energy_above":
        out["budget_wh"] = rule.budget_wh
    return out


def channel_to_json(channel: Channel, *, secrets: bool = False) -> dict[str, Any]:
    """A channel's JSON: the keys of its kind; secrets as :data:`REDACTED` unless ``secrets``."""
    out: dict[str, Any] = {"name": channel.name, "kind": channel.kind}
    for key in sorted(_CHANNEL_KIND_KEYS[channel.kind]):
        value = getattr(channel, key)
        if key in SECRET_FIELDS and value is not None and not secrets:
            value = REDACTED
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def config_to_json(cfg: AlertsConfig, *, secrets: bool = False) -> dict[str, Any]:
    """The JSON of ``cfg`` (what :func:`parse_config` reads). Secrets (a webhook's signing
    secret, an ntfy token, an SMTP password) show as :data:`REDACTED` unless ``secrets``; parsing
    the redacted JSON with ``previous=`` the stored configuration gives them back."""
    return {
        "rules": [rule_to_json(r) for r in cfg.rules],
        "channels": [channel_to_json(c, secrets=secrets) for c in cfg.channels],
    }


async def load_config(store: Store) -> AlertsConfig:
    """The stored configuration (empty when none is stored). A stored value that no longer
    parses raises :class:`ConfigError` (it was valid when saved: a newer kilowatch wrote it)."""
    data = await store.get_meta(CONFIG_KEY)
    if data is None:
        return AlertsConfig()
    try:
        return parse_config(data)
    except ConfigError as err:
        raise ConfigError(f"the stored alerts configuration is invalid: {err}") from None


async def save_config(store: Store, cfg: AlertsConfig) -> None:
    """Store ``cfg`` whole, secrets included (a value write: safe to repeat). The service picks
    it up at its next evaluation."""
    await store.put_meta(CONFIG_KEY, config_to_json(cfg, secrets=True))


__all__ = [
    "CHANNEL_KINDS",
    "CONFIG_KEY",
    "DEFAULT_FOR_S",
    "REDACTED",
    "RULE_KINDS",
    "SECRET_FIELDS",
    "SMTP_SECURITY",
    "AlertsConfig",
    "Channel",
    "Rule",
    "channel_to_json",
    "config_to_json",
    "load_config",
    "new_webhook_secret",
    "parse_channel",
    "parse_config",
    "parse_rule",
    "rule_to_json",
    "save_config",
    "webhook_key",
]
