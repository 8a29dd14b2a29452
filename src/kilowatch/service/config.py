"""Settings of ``kilowatch serve`` and of every command that opens the store.

One precedence, highest first:

1. command-line flags (only the ones the user actually passed);
2. ``KILOWATCH_<KEY>`` environment variables (``KILOWATCH_STORE``, ``KILOWATCH_HTTP_PORT``...);
3. the TOML file: ``--config FILE``, else ``$KILOWATCH_CONFIG``, else
   ``~/.config/kilowatch/config.toml`` when it exists (flat ``key = value`` pairs, keys as below);
4. defaults.

Every setting has the same name everywhere: TOML key ``mqtt_port``, environment variable
``KILOWATCH_MQTT_PORT``, flag ``--mqtt-port``. An invalid value raises :class:`ConfigError` naming
the key, the value and where it came from. ``docs/configuration.md`` lists them all (a test keeps it
complete).
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from kilowatch.errors import ConfigError

ENV_PREFIX = "KILOWATCH_"
CONFIG_ENV = "KILOWATCH_CONFIG"
"""Environment variable naming the TOML file (when ``--config`` is not given)."""
DEFAULT_CONFIG_FILE = Path("~/.config/kilowatch/config.toml")
DEFAULT_MQTT_PORT = 1883
"""IANA-registered MQTT port; the embedded broker binds it by default."""
DEFAULT_MQTTS_PORT = 8883
"""IANA-registered MQTT-over-TLS port."""
DEFAULT_COMMIT_STALL_S = 30.0
"""Default ``commit_stall_s``: :data:`kilowatch.intake.stats.STALL_S` (not imported: loading the
settings must not load the MQTT client)."""
DEFAULT_POLL_INTERVAL_S = 10.0
"""Default ``poll_interval_s`` (:data:`kilowatch.service.poller.POLL_INTERVAL_S`; not imported:
loading the settings must not load the RPC client)."""
DEFAULT_POLL_CONCURRENCY = 32
"""Default ``poll_concurrency`` (:data:`kilowatch.service.poller.POLL_CONCURRENCY`)."""
DEFAULT_ALERTS_INTERVAL_S = 5.0
"""Default ``alerts_interval_s`` (:data:`kilowatch.service.alerts.ALERTS_INTERVAL_S`; not
imported: loading the settings must not load the HTTP and SMTP clients)."""
DEFAULT_STOP_TIMEOUT_S = 5.0
"""Default ``stop_timeout_s``: with the MQTT disconnect (at most 2 s) and closing the store, a stop
takes well under 10 s even while the store fails."""


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class BrokerMode(StrEnum):
    """The brokers kilowatch runs itself (``broker`` may also be an external broker's URL)."""

    AUTO = "auto"
    """The managed mosquitto when mosquitto 2.x is installed, else the embedded broker."""
    MANAGED = "managed"
    """The managed mosquitto; an error when mosquitto 2.x is not installed."""
    EMBEDDED = "embedded"
    """kilowatch's own MQTT 3.1.1 broker, in its process."""


class LogFormat(StrEnum):
    TEXT = "text"
    """``key=value`` lines (logfmt)."""
    JSON = "json"
    """One JSON object per line."""


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/kilowatch``, else ``~/.local/share/kilowatch`` (XDG Base Directory spec)."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(base) / "kilowatch"


def default_client_id() -> str:
    """Fixed per machine, so the broker keeps our persistent session across restarts."""
    return f"kilowatch-{socket.gethostname()}"


def default_timezone(env: Mapping[str, str] | None = None) -> str:
    """The machine's IANA zone: ``$TZ``, else the target of ``/etc/localtime``, else ``UTC``."""
    env = os.environ if env is None else env
    tz = env.get("TZ", "").lstrip(":")
    if tz and _is_zone(tz):
        return tz
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        return "UTC"
    marker = "/zoneinfo/"
    if marker in target:
        name = target.split(marker, 1)[1]
        if _is_zone(name):
            return name
    return "UTC"


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


class Settings(BaseModel):
    """Every setting of kilowatch. Build it with :func:`load_settings`, not directly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Field(description="Directory of the default SQLite file.")
    store: str | None = Field(
        default=None,
        description="Store URL: sqlite:///path/file.db, redis://host:port/db, rediss://...; "
        "default sqlite:///<data_dir>/kilowatch.db.",
    )
    broker: str = Field(
        default="auto",
        description="'auto' (the managed mosquitto when mosquitto 2.x is installed, else the "
        "embedded broker), 'managed', 'embedded', or mqtt://user:pass@host:port, mqtts://...",
    )
    mosquitto: Path | None = Field(
        default=None,
        description="The mosquitto binary of the managed broker (default: found on PATH, in "
        "/usr/sbin or /usr/local/sbin).",
    )
    mqtt_host: str = Field(default="127.0.0.1", description="Address kilowatch's broker binds.")
    mqtt_port: int = Field(
        default=DEFAULT_MQTT_PORT, ge=0, le=65535, description="Port kilowatch's broker binds."
    )
    mqtt_user: str | None = Field(
        default=None,
        description="User the embedded broker requires (it or mqtt_password_file is required when "
        "mqtt_host is not loopback); also the user for an external broker whose URL has none.",
    )
    mqtt_password: str | None = Field(
        default=None, description="Password that goes with mqtt_user."
    )
    mqtt_client_id: str = Field(
        default_factory=default_client_id,
        description="MQTT client id; fixed, so the broker keeps our session while we are down.",
    )
    mqtt_ca: Path | None = Field(
        default=None, description="CA bundle (PEM) to verify an mqtts:// broker."
    )
    mqtt_cert: Path | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    mqtt_key: Path | None = Field(default=None, description="Private key (PEM) of mqtt_cert.")
    mqtt_insecure: bool = Field(
        default=False, description="Accept any certificate from an mqtts:// broker (testing only)."
    )
    # -- the embedded broker's password file and TLS listener ----------------------------------
    mqtt_password_file: Path | None = Field(
        default=None,
        description="Users of the embedded broker: mosquitto's password file (mosquitto_passwd).",
    )
    mqtt_tls_cert: Path | None = Field(
        default=None,
        description="Certificate (PEM) of the broker's TLS listener; setting it turns the "
        "listener on.",
    )
    mqtt_tls_key: Path | None = Field(
        default=None,
        description="Unencrypted private key (PEM) of mqtt_tls_cert (default: in its file).",
    )
    mqtt_tls_local: bool = Field(
        default=False,
        description="Give the managed mosquitto a TLS listener whose certificate kilowatch's "
        "local CA signs (made on first use; kilowatch broker ca export).",
    )
    mqtt_tls_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=f"Port of the broker's TLS listener (default {DEFAULT_MQTTS_PORT}).",
    )

    @field_validator("mqtt_tls_key")
    @classmethod
    def _needs_tls_cert(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("mqtt_tls_cert") is None:
            raise ValueError("set mqtt_tls_cert too (the certificate of the TLS listener)")
        return value

    @field_validator("mqtt_tls_local")
    @classmethod
    def _one_tls_source(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("mqtt_tls_cert") is not None:
            raise ValueError("use either mqtt_tls_cert or mqtt_tls_local, not both")
        return value

    @field_validator("mqtt_tls_port")
    @classmethod
    def _needs_tls(cls, value: Any, info: ValidationInfo) -> Any:
        tls = info.data.get("mqtt_tls_cert") is not None or info.data.get("mqtt_tls_local")
        if value is not None and not tls:
            raise ValueError(
                "set mqtt_tls_cert too (the certificate of the TLS listener), or mqtt_tls_local"
            )
        return value

    @property
    def embedded_tls_port(self) -> int | None:
        """The TLS listener's port: ``mqtt_tls_port``, else 8883; None without TLS."""
        if self.mqtt_tls_cert is None and not self.mqtt_tls_local:
            return None
        return DEFAULT_MQTTS_PORT if self.mqtt_tls_port is None else self.mqtt_tls_port

    # ------------------------------------------------------------------------------------------
    shelly_topic_prefixes: tuple[str, ...] = Field(
        default=("+",),
        description="MQTT filter fragments for Shelly Gen2+ topic prefixes ('+' = any one level; "
        "add e.g. 'home/+' for two-level prefixes).",
    )
    tasmota_full_topics: tuple[str, ...] = Field(
        default=("%prefix%/%topic%/",), description="Tasmota FullTopic patterns."
    )
    zigbee2mqtt_base_topics: tuple[str, ...] = Field(
        default=("zigbee2mqtt",), description="Zigbee2MQTT base topics."
    )
    topic_sources: tuple[str, ...] = Field(
        default=(),
        description="Routes 'FILTER=SOURCE': topics the MQTT filter matches are that source's, in "
        "any topic layout of it (e.g. 'site7/+/tele/+=tasmota').",
    )
    http_host: str = Field(default="127.0.0.1", description="Address the web app binds.")
    http_port: int = Field(default=8000, ge=0, le=65535, description="Port the web app binds.")
    tz: str = Field(
        default_factory=default_timezone,
        description="Site time zone (IANA name) for hours and days.",
    )
    log_level: LogLevel = Field(default=LogLevel.INFO, description="DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = Field(
        default=LogFormat.TEXT, description="'text' (key=value) or 'json'."
    )
    commit_stall_s: float = Field(
        default=DEFAULT_COMMIT_STALL_S,
        gt=0,
        description="Seconds store commits may keep failing, or a batch may wait uncommitted, "
        "before /api/v1/health reports 'degraded'.",
    )
    stop_timeout_s: float = Field(
        default=DEFAULT_STOP_TIMEOUT_S,
        ge=0,
        description="Seconds a stop (SIGTERM, SIGINT) keeps trying to commit what is in flight; "
        "then kilowatch exits 1 without acknowledging it (the broker delivers it again).",
    )
    # -- repair of estimated energy (docs/configuration.md, src/kilowatch/service/repair.py) ----
    repair_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between two repairs of estimated slots (from the metering script's "
        "hours and from device history).",
    )
    repair_window_h: float = Field(
        default=168.0, gt=0, description="Hours back from now that each repair looks at."
    )
    repair_concurrency: int = Field(
        default=4, ge=1, description="Device history backfills in flight at once."
    )
    # -- alerts (docs/alerts.md, src/kilowatch/service/alerts.py) ------------------------------
    alerts_interval_s: float = Field(
        default=DEFAULT_ALERTS_INTERVAL_S,
        gt=0,
        description="Seconds between two evaluations of the alert rules.",
    )
    # -- Home Assistant MQTT discovery (docs/homeassistant.md) -----------------------------------
    homeassistant: bool = Field(
        default=False,
        description="Publish Home Assistant MQTT discovery configs and states of every meter "
        "(energy in kWh, power in W) on the broker kilowatch reads.",
    )

    # -- devices without MQTT: HTTP polling (docs/polling.md) --------------------------------------
    poll: tuple[str, ...] = Field(
        default=(),
        description="Registered devices to poll over HTTP (Shelly.GetStatus): --select "
        "expressions ('transport=lan,model=S3PM*', a device id, '*'); a device matching any one "
        "is polled. ';'-separated in a flag or variable.",
    )
    poll_gen1: tuple[str, ...] = Field(
        default=(), description="Shelly Gen1 devices to poll over HTTP (GET /status): host[:port]."
    )
    poll_interval_s: float = Field(
        default=DEFAULT_POLL_INTERVAL_S, gt=0, description="Seconds between two polls of a device."
    )
    poll_concurrency: int = Field(
        default=DEFAULT_POLL_CONCURRENCY,
        ge=1,
        description="Polls in flight at once, across all polled devices.",
    )

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not _is_zone(value):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Sofia)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if value not in set(BrokerMode):
            parse_broker_url(value)
        return value

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in {"sqlite", "redis", "rediss"}:
            raise ValueError("a store URL starts with sqlite:///, redis:// or rediss://")
        return value

    @field_validator(
        "shelly_topic_prefixes",
        "tasmota_full_topics",
        "zigbee2mqtt_base_topics",
        "topic_sources",
        "poll_gen1",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        # Environment variables and flags give one string: comma-separated.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("poll", mode="before")
    @classmethod
    def _split_selections(cls, value: Any) -> Any:
        # A selection joins its terms with commas (--select model=S3PM*,room=hall): in a flag or
        # variable, selections are separated by semicolons instead.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(";") if part.strip())
        return value

    @field_validator("topic_sources")
    @classmethod
    def _routes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for route in value:
            topic_filter, sep, source = route.rpartition("=")
            if not sep or not topic_filter or not source:
                raise ValueError(f"{route!r} is not FILTER=SOURCE (e.g. 'site7/+/tele/+=tasmota')")
        return value

    @property
    def topic_routes(self) -> tuple[tuple[str, str], ...]:
        """``topic_sources`` as ``(MQTT topic filter, decoder name)`` pairs."""
        return tuple((r.rpartition("=")[0], r.rpartition("=")[2]) for r in self.topic_sources)

    @property
    def store_url(self) -> str:
        """The store URL in effect: ``store``, else the SQLite file in ``data_dir``."""
        return self.store or sqlite_url(self.data_dir / "kilowatch.db")

    @property
    def embedded(self) -> bool:
        """Whether ``broker`` names the embedded broker itself (``auto`` may pick it too)."""
        return self.broker == BrokerMode.EMBEDDED

    @property
    def broker_mode(self) -> BrokerMode | None:
        """``auto``, ``managed`` or ``embedded``; ``None`` for an external broker's URL."""
        return BrokerMode(self.broker) if self.broker in set(BrokerMode) else None

    @property
    def own_broker(self) -> bool:
        """Whether kilowatch runs the broker itself (managed mosquitto or embedded)."""
        return self.broker_mode is not None


def sqlite_url(path: Path) -> str:
    """``sqlite:///`` followed by the path (absolute paths therefore give four slashes)."""
    return f"sqlite:///{path}"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """An external broker, parsed from ``mqtt://user:pass@host:port`` or ``mqtts://...``."""

    host: str
    port: int
    tls: bool
    user: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; raise ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "mqtts"}:
        raise ValueError(
            "a broker is 'auto', 'managed', 'embedded', mqtt://user:pass@host:port or mqtts://..."
        )
    if not parts.hostname:
        raise ValueError("the broker URL has no host")
    try:
        port = parts.port
    except ValueError as err:
        raise ValueError(f"bad port in broker URL: {err}") from None
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port or (DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT),
        tls=tls,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def setting_names() -> list[str]:
    """Every setting key, in declaration order (for docs and their test)."""
    return list(Settings.model_fields)


def env_var(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def config_file_path(explicit: Path | None, env: Mapping[str, str]) -> tuple[Path | None, str]:
    """The TOML file to read and how it was chosen (``None`` when there is none)."""
    if explicit is not None:
        return explicit, "--config"
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser(), f"${CONFIG_ENV}"
    default = DEFAULT_CONFIG_FILE.expanduser()
    return (default, "default config file") if default.is_file() else (None, "")


def _read_toml(path: Path, how: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} (from {how}) does not exist") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    return data


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Merge flags > ``KILOWATCH_*`` environment > TOML file > defaults into one :class:`Settings`.

    ``cli`` holds the flags the user passed (``None`` values mean "not given" and are ignored).
    Raises :class:`ConfigError` with the key, the value and its source when a value is invalid.
    """
    env = os.environ if env is None else env
    known = set(Settings.model_fields)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    path, how = config_file_path(config_file, env)
    if path is not None:
        for key, value in _read_toml(path, how).items():
            if key not in known:
                raise ConfigError(
                    f"unknown setting {key!r} in config file {path}; known settings: "
                    + ", ".join(sorted(known))
                )
            values[key], sources[key] = value, f"config file {path}"
    for key in known:
        name = env_var(key)
        if env.get(name, "") != "":
            values[key], sources[key] = env[name], f"environment variable {name}"
    for key, value in (cli or {}).items():
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}")  # a programming error in a CLI command
        if value is not None:
            values[key], sources[key] = value, f"flag {flag(key)}"
    if "data_dir" not in values:
        values["data_dir"] = default_data_dir(env)
        sources["data_dir"] = "default"
    if "tz" not in values:
        values["tz"] = default_timezone(env)
        sources["tz"] = "default"
    try:
        settings = Settings.model_validate(values)
    except ValidationError as err:
        raise _config_error(err, values, sources) from None
    return _expand_paths(settings)


def _expand_paths(settings: Settings) -> Settings:
    updates: dict[str, Any] = {"data_dir": settings.data_dir.expanduser()}
    broker_files = ("mosquitto", "mqtt_password_file", "mqtt_tls_cert", "mqtt_tls_key")
    for key in ("mqtt_ca", "mqtt_cert", "mqtt_key", *broker_files):
        value = getattr(settings, key)
        if value is not None:
            updates[key] = value.expanduser()
    return settings.model_copy(update=updates)


def _config_error(
    err: ValidationError, values: Mapping[str, Any], sources: Mapping[str, str]
) -> ConfigError:
    first = err.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else "?"
    message = str(first["msg"]).removeprefix("Value error, ")
    value = values.get(key)
    shown = "***" if key == "mqtt_password" else repr(value)
    return ConfigError(f"invalid {key} = {shown} (from {sources.get(key, 'default')}): {message}")


def resolve_store_url(store: str | None = None, *, config_file: Path | None = None) -> str:
    """The store URL a command should open: ``--store``, else env, else config file, else default.

    For CLI commands other than ``serve`` (``energy``, ``devices``, ``deadletters``...).
    """
    return load_settings({"store": store}, config_file=config_file).store_url


__all__ = [
    "BrokerAddress",
    "BrokerMode",
    "LogFormat",
    "LogLevel",
    "Settings",
    "default_client_id",
    "default_data_dir",
    "default_timezone",
    "env_var",
    "flag",
    "load_settings",
    "parse_broker_url",
    "resolve_store_url",
    "setting_names",
    "sqlite_url",
]
