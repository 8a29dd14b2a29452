"""Profiles: the desired state of a group of devices, written in TOML (docs/profiles.md).

:func:`load_profile` reads and validates a profile strictly: an unknown key, a wrong type or a
missing file is a :class:`~kilowatch.errors.FleetError` naming the file, the key and what is
expected. Secrets never sit in a profile: passwords come from environment variables
(``password_env``) or are generated per device and kept in kilowatch's secrets file.

Per-device values (``{{ device.id }}``, ``{{ device.mac }}``, ``{{ device.name }}``,
``{{ device.room }}``, and ``{{ vars.NAME }}`` in scripts) are filled in by :func:`fill` for one
device's :class:`DeviceValues`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from kilowatch.errors import FleetError
from kilowatch.fleet.scripts import SHIPPED_PREFIX, SHIPPED_SCRIPTS, read_script
from kilowatch.fleet.tlsmaterial import TlsMaterial, load_material

DEVICE_FIELDS = ("id", "mac", "name", "room")
"""What ``{{ device.<field> }}`` may name."""
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
"""``{{ device.id }}``: spaces inside the braces are optional."""
ANY_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*\s*\}\}")
"""Whatever is meant as a placeholder, known or not."""
SSL_CA_VALUES = {"none": None, "*": "*", "user_ca.pem": "user_ca.pem", "ca.pem": "ca.pem"}
"""``mqtt.ssl_ca`` as written in a profile → as the device holds it (§7.1; ``none``: plain TCP,
TOML has no null)."""
FIRMWARE_STAGES = ("stable", "beta")
VERSION = re.compile(r"\d+\.\d+\.\d+")
TOPIC_PREFIX_MAX = 300
"""``topic_prefix`` limit of the firmware (§7.1)."""


@dataclass(frozen=True, slots=True)
class DeviceValues:
    """What a profile's templates may use of one device."""

    id: str
    mac: str | None = None
    name: str | None = None
    room: str | None = None


@dataclass(frozen=True, slots=True)
class MqttSpec:
    """``[mqtt]``: each field ``None`` is left as the device has it."""

    enable: bool = True
    server: str | None = None
    user: str | None = None
    """A template."""
    password: str | None = field(default=None, repr=False)
    """Read from ``password_env`` when the profile is loaded; write-only on the device."""
    password_env: str | None = None
    topic_prefix: str | None = None
    """A template."""
    ssl_ca: str | None = None
    """``"*"``, ``"user_ca.pem"``, ``"ca.pem"``, or ``"none"`` for plain TCP."""
    use_client_cert: bool | None = None
    status_ntf: bool | None = None
    rpc_ntf: bool | None = None


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """``[system]``: the device's name (a template), time zone, SNTP server, debug log over MQTT."""

    name: str | None = None
    tz: str | None = None
    sntp: str | None = None
    debug_mqtt: bool | None = None


class AuthMode(Enum):
    """Where the device password comes from."""

    ENV = "env"
    """One password for every device, from an environment variable."""
    GENERATE = "generate"
    """A random password per device, kept in kilowatch's secrets file."""


@dataclass(frozen=True, slots=True)
class AuthSpec:
    """``[auth]``: the device password (``Shelly.SetAuth``), set last by ``apply``."""

    mode: AuthMode
    env: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ScriptEntry:
    """One ``[[scripts]]`` table: the code is a template, filled in per device."""

    name: str
    file: Path
    code: str = field(repr=False)
    enable: bool = True
    version: str | None = None
    vars: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TlsSpec:
    """``[tls]``: paths of the PEM files (relative to the profile), all optional."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class FirmwareSpec:
    """``[firmware]``: ``minimum = "1.5.1"`` or ``stage = "stable"``; reported, never installed
    here (``kilowatch fleet firmware update``)."""

    minimum: str | None = None
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated profile. ``None`` sections are not managed."""

    path: Path
    select: tuple[str, ...] = ()
    mqtt: MqttSpec | None = None
    system: SystemSpec | None = None
    auth: AuthSpec | None = None
    scripts: tuple[ScriptEntry, ...] = ()
    tls: TlsSpec | None = None
    tls_material: TlsMaterial | None = None
    """``tls``'s files, read and checked as the devices require when the profile is loaded."""
    firmware: FirmwareSpec | None = None


# --- reading --------------------------------------------------------------------------------


class _Table:
    """One TOML table being read: every read names the file and key; leftovers are refused."""

    def __init__(self, path: Path, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise FleetError(str(path), f"{where} must be a table, got {_kind(data)}")
        self.path, self.where, self.data = path, where, dict(data)
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, expected: str) -> FleetError:
        got = self.data.get(name)
        return FleetError(str(self.path), f"{self.key(name)} must be {expected}, got {got!r}")

    def get(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(name, "a non-empty string")
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.get(name)
        if value is not None and not isinstance(value, bool):
            raise self.fail(name, "true or false")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(name, "a list of non-empty strings")
        return tuple(value)

    def close(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            allowed = ", ".join(sorted(self.seen))
            raise FleetError(
                str(self.path),
                f"unknown key {self.key(unknown[0])!r} (allowed here: {allowed})",
            )


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a table", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _env(table: _Table, name: str, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(variable, its value)`` of a ``*_env`` key; the variable must be set and non-empty."""
    var = table.string(name)
    if var is None:
        return None, None
    value = env.get(var)
    if not value:
        raise FleetError(
            str(table.path),
            f"{table.key(name)} names the environment variable {var}, which is not set: "
            f"export {var}=... before running kilowatch",
        )
    return var, value


def check_template(
    path: Path, key: str, text: str, *, allow_vars: frozenset[str] = frozenset()
) -> None:
    """Refuse a ``{{ name }}`` that names anything but a device field (or a declared var).
    Only what looks like a placeholder (dotted names in double braces) is one, as in
    :func:`kilowatch.fleet.scriptdeploy.render`."""
    for match in ANY_PLACEHOLDER.finditer(text):
        ok = PLACEHOLDER.fullmatch(match.group(0))
        scope, name = (ok.group(1), ok.group(2)) if ok else ("", "")
        if (scope == "device" and name in DEVICE_FIELDS) or (
            scope == "vars" and name in allow_vars
        ):
            continue
        known = ", ".join(f"{{{{ device.{f} }}}}" for f in DEVICE_FIELDS)
        if allow_vars:
            known += ", " + ", ".join(f"{{{{ vars.{v} }}}}" for v in sorted(allow_vars))
        raise FleetError(
            str(path), f"{key}: unknown placeholder {match.group(0)!r} (known: {known})"
        )


def fill(template: str, device: DeviceValues, variables: Mapping[str, str] | None = None) -> str:
    """``template`` with each ``{{ device.x }}`` / ``{{ vars.x }}`` replaced for ``device``.

    Raises :class:`FleetError` (subject: the device id) when the device lacks a value the
    template uses, e.g. a name or room it was never given."""

    def value(match: re.Match[str]) -> str:
        scope, name = match.group(1), match.group(2)
        if scope == "vars" and variables is not None and name in variables:
            return variables[name]
        got = getattr(device, name, None) if scope == "device" and name in DEVICE_FIELDS else None
        if got is None:
            raise FleetError(
                device.id,
                f"the profile uses {match.group(0)} but this device has no {name}; give it one "
                "in the registry or drop the placeholder",
            )
        return str(got)

    return PLACEHOLDER.sub(value, template)


def _mqtt(t: _Table, env: Mapping[str, str]) -> MqttSpec:
    enable = t.boolean("enable")
    env_name, password = _env(t, "password_env", env)
    if "password" in t.data:
        raise FleetError(
            str(t.path),
            f"{t.key('password')}: a profile holds no secrets; put the broker password in an "
            "environment variable and name it with password_env",
        )
    ssl_ca = t.string("ssl_ca")
    if ssl_ca is not None and ssl_ca not in SSL_CA_VALUES:
        raise t.fail("ssl_ca", 'one of "none" (plain TCP), "*", "user_ca.pem", "ca.pem"')
    spec = MqttSpec(
        enable=True if enable is None else enable,
        server=t.string("server"),
        user=t.string("user"),
        password=password,
        password_env=env_name,
        topic_prefix=t.string("topic_prefix"),
        ssl_ca=ssl_ca,
        use_client_cert=t.boolean("use_client_cert"),
        status_ntf=t.boolean("status_ntf"),
        rpc_ntf=t.boolean("rpc_ntf"),
    )
    for key in ("user", "topic_prefix"):
        text = getattr(spec, key)
        if text is not None:
            check_template(t.path, t.key(key), text)
    prefix = spec.topic_prefix or ""
    if prefix.startswith("$") or any(c in prefix for c in "#+%?"):
        raise t.fail("topic_prefix", "a topic prefix that neither starts with $ nor holds # + % ?")
    return spec


def _system(t: _Table) -> SystemSpec:
    spec = SystemSpec(
        name=t.string("name"),
        tz=t.string("tz"),
        sntp=t.string("sntp"),
        debug_mqtt=t.boolean("debug_mqtt"),
    )
    if spec.name is not None:
        check_template(t.path, t.key("name"), spec.name)
    return spec


def _auth(t: _Table, env: Mapping[str, str]) -> AuthSpec:
    password = t.string("password")
    if password is not None and password != "generate":
        raise FleetError(
            str(t.path),
            f'{t.key("password")} may only be "generate" (a random password per device, kept '
            "in kilowatch's secrets file); put a shared password in an environment variable "
            "and name it with password_env",
        )
    env_name, value = _env(t, "password_env", env)
    if (password is None) == (env_name is None):
        raise FleetError(
            str(t.path), 'auth needs exactly one of password_env = "NAME" or password = "generate"'
        )
    if env_name is not None:
        return AuthSpec(AuthMode.ENV, env=env_name, password=value)
    return AuthSpec(AuthMode.GENERATE)


def _relative(t: _Table, name: str, *, required: bool = False) -> Path | None:
    text = t.string(name, required=required)
    if text is None:
        return None
    path = (t.path.parent / text).resolve()
    if not path.is_file():
        raise FleetError(str(t.path), f"{t.key(name)}: no such file {path}")
    return path


def _script_source(t: _Table) -> tuple[Path, str]:
    """``file``: a path relative to the profile, or ``kilowatch:<name>``, a script kilowatch ships
    (``kilowatch:hourly_energy.js``, the metering script)."""
    text = t.string("file", required=True)
    if text is not None and text.startswith(SHIPPED_PREFIX):
        name = text.removeprefix(SHIPPED_PREFIX)
        if name not in SHIPPED_SCRIPTS:
            shipped = ", ".join(SHIPPED_PREFIX + n for n in SHIPPED_SCRIPTS)
            raise t.fail("file", f"a file, or a script kilowatch ships: {shipped}")
        return Path(SHIPPED_PREFIX + name), read_script(name)
    path = _relative(t, "file", required=True)
    assert path is not None
    try:
        return path, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FleetError(str(t.path), f"{t.key('file')}: cannot read {path}: {err}") from err


def _script(t: _Table, names: set[str]) -> ScriptEntry:
    name = t.string("name", required=True)
    assert name is not None
    if name in names:
        raise t.fail("name", "unique among [[scripts]]")
    names.add(name)
    path, code = _script_source(t)
    enable = t.boolean("enable")
    version = t.get("version")
    if version is not None and (not isinstance(version, str) or not version):
        raise t.fail("version", "a non-empty string")
    variables: dict[str, str] = {}
    raw_vars = t.get("vars")
    if raw_vars is not None:
        vt = _Table(t.path, t.key("vars"), raw_vars)
        for key, value in vt.data.items():
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise vt.fail(key, "a string or a number")
            variables[key] = str(value)
            vt.get(key)
            check_template(t.path, vt.key(key), str(value))
    check_template(t.path, f"{t.key('file')} ({path.name})", code, allow_vars=frozenset(variables))
    return ScriptEntry(
        name=name,
        file=path,
        code=code,
        enable=True if enable is None else enable,
        version=version,
        vars=variables,
    )


def _firmware(t: _Table) -> FirmwareSpec:
    spec = FirmwareSpec(minimum=t.string("minimum"), stage=t.string("stage"))
    if (spec.minimum is None) == (spec.stage is None):
        raise FleetError(
            str(t.path), 'firmware needs exactly one of minimum = "1.5.1" or stage = "stable"'
        )
    if spec.minimum is not None and not VERSION.fullmatch(spec.minimum):
        raise t.fail("minimum", 'a version like "1.5.1"')
    if spec.stage is not None and spec.stage not in FIRMWARE_STAGES:
        raise t.fail("stage", '"stable" or "beta"')
    return spec


def parse_profile(path: Path, text: str, *, env: Mapping[str, str] | None = None) -> Profile:
    """Validate a profile's TOML ``text`` (``path`` names it in errors and anchors relative
    file names). ``env`` defaults to ``os.environ``."""
    environ = os.environ if env is None else env
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise FleetError(str(path), f"not valid TOML: {err}") from err
    top = _Table(path, "", data)

    def section(name: str) -> _Table | None:
        raw = top.get(name)
        return None if raw is None else _Table(path, name, raw)

    select: tuple[str, ...] = ()
    if (t := section("select")) is not None:
        select = t.strings("match")
        t.close()
    mqtt = system = auth = tls = firmware = None
    if (t := section("mqtt")) is not None:
        mqtt = _mqtt(t, environ)
        t.close()
    if (t := section("system")) is not None:
        system = _system(t)
        t.close()
    if (t := section("auth")) is not None:
        auth = _auth(t, environ)
        t.close()
    if (t := section("tls")) is not None:
        tls = TlsSpec(ca=_relative(t, "ca"), cert=_relative(t, "cert"), key=_relative(t, "key"))
        t.close()
        if (tls.cert is None) != (tls.key is None):
            raise FleetError(str(path), "tls needs cert and key together (or neither)")
    if (t := section("firmware")) is not None:
        firmware = _firmware(t)
        t.close()
    scripts: list[ScriptEntry] = []
    raw_scripts = top.get("scripts")
    if raw_scripts is not None:
        if not isinstance(raw_scripts, list):
            raise FleetError(str(path), "scripts must be an array of tables: [[scripts]]")
        names: set[str] = set()
        for i, raw in enumerate(raw_scripts):
            st = _Table(path, f"scripts[{i}]", raw)
            scripts.append(_script(st, names))
            st.close()
    top.close()
    mqtt = _mqtt_tls_defaults(path, mqtt, tls)
    material = None
    if tls is not None and (tls.ca is not None or tls.cert is not None):
        material = load_material(ca=tls.ca, cert=tls.cert, key=tls.key)
    return Profile(
        path=path,
        select=select,
        mqtt=mqtt,
        system=system,
        auth=auth,
        scripts=tuple(scripts),
        tls=tls,
        tls_material=material,
        firmware=firmware,
    )


def _mqtt_tls_defaults(path: Path, mqtt: MqttSpec | None, tls: TlsSpec | None) -> MqttSpec | None:
    """Point MQTT at the profile's TLS material unless it says otherwise; refuse pointing it at
    material the profile does not install."""
    if mqtt is None:
        return None
    ssl_ca, client = mqtt.ssl_ca, mqtt.use_client_cert
    if tls is not None and tls.ca is not None and ssl_ca is None:
        ssl_ca = "user_ca.pem"
    if tls is not None and tls.cert is not None and client is None:
        client = True
    if ssl_ca == "user_ca.pem" and (tls is None or tls.ca is None):
        raise FleetError(
            str(path), 'mqtt.ssl_ca = "user_ca.pem" needs the CA bundle: add [tls] ca = "FILE"'
        )
    if client and (tls is None or tls.cert is None):
        raise FleetError(
            str(path), "mqtt.use_client_cert = true needs [tls] cert and key (the client's PEM)"
        )
    return MqttSpec(
        enable=mqtt.enable,
        server=mqtt.server,
        user=mqtt.user,
        password=mqtt.password,
        password_env=mqtt.password_env,
        topic_prefix=mqtt.topic_prefix,
        ssl_ca=ssl_ca,
        use_client_cert=client,
        status_ntf=mqtt.status_ntf,
        rpc_ntf=mqtt.rpc_ntf,
    )


def load_profile(path: Path, *, env: Mapping[str, str] | None = None) -> Profile:
    """Read and validate the profile at ``path`` (see :func:`parse_profile`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FleetError(str(path), f"cannot read the profile: {err}") from err
    return parse_profile(path.resolve(), text, env=env)


__all__ = [
    "DEVICE_FIELDS",
    "AuthMode",
    "AuthSpec",
    "DeviceValues",
    "FirmwareSpec",
    "MqttSpec",
    "Profile",
    "ScriptEntry",
    "SystemSpec",
    "TlsSpec",
    "check_template",
    "fill",
    "load_profile",
    "parse_profile",
]
