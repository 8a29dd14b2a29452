"""Plan: read one device's actual state and list how it differs from a profile (its drift).

:func:`desired_state` turns a :class:`~kilowatch.fleet.profile.Profile` into what one device
should hold (templates filled in with its values); :func:`read_plan` reads the device
(``Shelly.GetDeviceInfo``, ``Sys.GetConfig``/``GetStatus``, ``MQTT.GetConfig``, its scripts, the
fingerprint of its TLS material and of its broker password) and returns a :class:`DevicePlan`:
one :class:`Change` per field, ``actual → desired``, grouped by the :class:`Step` that applies it.
Nothing here writes to a device.

Secrets never appear in a plan: a password change reads ``(other) → $NAME``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from kilowatch.errors import FleetError, KilowatchError, RpcCallError
from kilowatch.fleet.profile import (
    AuthMode,
    AuthSpec,
    DeviceValues,
    FirmwareSpec,
    MqttSpec,
    Profile,
    SystemSpec,
    fill,
)
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.scriptdeploy import (
    SCRIPT_LIMIT_BYTES,
    ScriptSpec,
    render,
    script_changes,
    script_state,
)
from kilowatch.fleet.tlsmaterial import TlsMaterial, material_on_device
from kilowatch.store.protocol import Registration

MQTT_PASS_KEY = "kilowatch.mqtt_pass"
"""KVS key (≤ 42 characters, §15) holding a salted SHA-256 of the broker password kilowatch last
set: ``MQTT.GetConfig`` never returns ``pass`` (§7.1), so this is how a plan tells whether it
changed without writing it again on every apply."""
NOT_FOUND = -105
"""``KVS.Get`` of a missing key (§2.4)."""
TOPIC_PREFIX_MAX = 300


class Step(Enum):
    """What ``apply`` does to a device, in the order it does it (``docs/profiles.md``): TLS
    material before the MQTT config that points at it, the password last so earlier steps need
    none, the reboot once at the end when an answer asked for it."""

    TLS = "tls"
    MQTT = "mqtt"
    SYSTEM = "system"
    SCRIPTS = "scripts"
    AUTH = "auth"
    REBOOT = "reboot"
    FIRMWARE = "firmware"
    """Reported only: ``kilowatch fleet firmware update`` installs firmware."""


STEP_ORDER = (Step.TLS, Step.MQTT, Step.SYSTEM, Step.SCRIPTS, Step.AUTH, Step.REBOOT)
"""The steps ``apply`` runs, in order (firmware is never applied here)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: ``field`` (``mqtt.server``, ``sys.location.tz``, ``script:NAME``, ``tls``,
    ``auth``…) from ``actual`` to ``desired`` (JSON values or short words, never a secret).
    ``advisory`` changes (firmware) are reported but not applied by ``apply``."""

    step: Step
    field: str
    actual: Any
    desired: Any
    advisory: bool = False

    def __str__(self) -> str:
        return f"{self.field}: {_show(self.actual)} → {_show(self.desired)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step.value,
            "field": self.field,
            "actual": self.actual,
            "desired": self.desired,
            "advisory": self.advisory,
        }


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return repr(value)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as the report carries it: the exception's ``type`` name, its ``message``, and
    the device's own error ``code`` when it answered with one."""

    type: str
    message: str
    code: int | None = None

    @classmethod
    def of(cls, err: BaseException) -> ErrorInfo:
        code = err.code if isinstance(err, RpcCallError) else None
        return cls(type(err).__name__, str(err), code)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "code": self.code}


@dataclass(frozen=True, slots=True)
class Desired:
    """What one device should hold: MQTT and Sys config fragments, rendered scripts, TLS
    material, auth and firmware expectations. Empty fragments are not managed."""

    device: DeviceValues
    mqtt: Mapping[str, Any] = field(default_factory=dict)
    mqtt_pass: str | None = field(default=None, repr=False)
    mqtt_pass_env: str | None = None
    system: Mapping[tuple[str, ...], Any] = field(default_factory=dict)
    """``("location", "tz") → "Europe/Vienna"``: a path into ``Sys.GetConfig``."""
    scripts: tuple[ScriptSpec, ...] = ()
    tls: TlsMaterial | None = None
    auth: AuthSpec | None = None
    firmware: FirmwareSpec | None = None


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One device's drift. ``error`` is set (and ``changes`` empty) when it could not be read.
    ``info`` is its ``Shelly.GetDeviceInfo``; ``desired`` what the profile wants of it."""

    device: str
    changes: tuple[Change, ...] = ()
    error: ErrorInfo | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    desired: Desired | None = None

    @property
    def pending(self) -> tuple[Change, ...]:
        """The changes ``apply`` makes (advisory ones left out)."""
        return tuple(c for c in self.changes if not c.advisory)

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps ``apply`` would run, in order."""
        wanted = {c.step for c in self.pending}
        return tuple(s for s in STEP_ORDER if s in wanted)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "changes": [c.to_json() for c in self.changes],
            "error": None if self.error is None else self.error.to_json(),
        }


class Passwords(Protocol):
    """Where kilowatch keeps each device's password (the secrets file in production)."""

    async def get(self, reg: Registration) -> str | None:
        """The password kilowatch holds for the device, or ``None``."""
        ...

    async def put(self, reg: Registration, password: str) -> None:
        """Remember ``password`` for the device (after ``Shelly.SetAuth`` accepted it)."""
        ...


# --- desired state --------------------------------------------------------------------------


def device_values(reg: Registration, info: Mapping[str, Any]) -> DeviceValues:
    """The template values of a device: the registry's name and room, the device's own id and
    MAC (the registry's when the device says nothing)."""
    name = reg.name or info.get("name")
    return DeviceValues(
        id=str(info.get("id") or reg.device),
        mac=str(info.get("mac") or reg.mac or "") or None,
        name=str(name) if name else None,
        room=reg.room,
    )


def _mqtt_fragment(spec: MqttSpec, device: DeviceValues) -> dict[str, Any]:
    out: dict[str, Any] = {"enable": spec.enable}
    if spec.server is not None:
        out["server"] = spec.server
    if spec.user is not None:
        out["user"] = fill(spec.user, device)
    if spec.topic_prefix is not None:
        prefix = fill(spec.topic_prefix, device)
        if len(prefix) > TOPIC_PREFIX_MAX or prefix.startswith("$") or set(prefix) & set("#+%?"):
            raise FleetError(
                device.id,
                f"topic prefix {prefix!r} is not one the device accepts (at most "
                f"{TOPIC_PREFIX_MAX} characters, no leading $, none of # + % ?)",
            )
        out["topic_prefix"] = prefix
    if spec.ssl_ca is not None:
        out["ssl_ca"] = None if spec.ssl_ca == "none" else spec.ssl_ca
    for key in ("use_client_cert", "status_ntf", "rpc_ntf"):
        value = getattr(spec, key)
        if value is not None:
            out[key] = value
    return out


def _system_fragment(spec: SystemSpec, device: DeviceValues) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    if spec.name is not None:
        out[("device", "name")] = fill(spec.name, device)
    if spec.tz is not None:
        out[("location", "tz")] = spec.tz
    if spec.sntp is not None:
        out[("sntp", "server")] = spec.sntp
    if spec.debug_mqtt is not None:
        out[("debug", "mqtt", "enable")] = spec.debug_mqtt
    return out


def _script_specs(profile: Profile, device: DeviceValues) -> tuple[ScriptSpec, ...]:
    specs = []
    for entry in profile.scripts:
        values = {
            "device": {
                "id": device.id,
                "mac": device.mac,
                "name": device.name,
                "room": device.room,
            },
            "vars": {k: fill(v, device) for k, v in entry.vars.items()},
        }
        code = render(entry.code, values, subject=f"script {entry.name!r} for {device.id}")
        spec = ScriptSpec(entry.name, code, enable=entry.enable, version=entry.version)
        if spec.size > SCRIPT_LIMIT_BYTES:
            # Refused here, before any write: the device would take the first chunks and then
            # answer -108, leaving a truncated script behind.
            raise FleetError(
                device.id,
                f"script {entry.name!r} is {spec.size} bytes for this device, over the "
                f"device limit of {SCRIPT_LIMIT_BYTES} bytes; shorten {entry.file.name}",
            )
        specs.append(spec)
    return tuple(specs)


def desired_state(profile: Profile, device: DeviceValues) -> Desired:
    """What ``profile`` wants of ``device``. Raises :class:`FleetError` (subject: the device id)
    when a template needs a value the device lacks or a rendered script is over the limit."""
    mqtt = profile.mqtt
    return Desired(
        device=device,
        mqtt=_mqtt_fragment(mqtt, device) if mqtt is not None else {},
        mqtt_pass=mqtt.password if mqtt is not None else None,
        mqtt_pass_env=mqtt.password_env if mqtt is not None else None,
        system=_system_fragment(profile.system, device) if profile.system is not None else {},
        scripts=_script_specs(profile, device),
        tls=profile.tls_material,
        auth=profile.auth,
        firmware=profile.firmware,
    )


def mqtt_pass_fingerprint(device_id: str, password: str) -> str:
    """What :data:`MQTT_PASS_KEY` holds: salted with the device id, so equal passwords on two
    devices do not show as equal."""
    return hashlib.sha256(f"kilowatch-mqtt-pass:{device_id}:{password}".encode()).hexdigest()


def version_tuple(ver: str) -> tuple[int, ...]:
    """``"1.5.1-beta2"`` → ``(1, 5, 1)``: the numeric part that orders releases."""
    head = ver.split("-", 1)[0]
    parts = []
    for piece in head.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


# --- reading --------------------------------------------------------------------------------


async def kvs_get(rpc: ShellyRpc, key: str) -> Any:
    """``KVS.Get``'s value, or ``None`` when the key is missing."""
    try:
        result = await rpc.call("KVS.Get", {"key": key})
    except RpcCallError as err:
        if err.code == NOT_FOUND:
            return None
        raise
    return result.get("value") if isinstance(result, dict) else None


def _dig(config: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = config
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


async def _mqtt_changes(rpc: ShellyRpc, want: Desired) -> list[Change]:
    if not want.mqtt and want.mqtt_pass is None:
        return []
    actual = await rpc.mqtt_get_config()
    changes = [
        Change(Step.MQTT, f"mqtt.{key}", actual.get(key), value)
        for key, value in want.mqtt.items()
        if actual.get(key) != value
    ]
    if want.mqtt_pass is not None:
        held = await kvs_get(rpc, MQTT_PASS_KEY)
        if held != mqtt_pass_fingerprint(want.device.id, want.mqtt_pass):
            was = "(not set by kilowatch)" if held is None else "(other)"
            changes.append(Change(Step.MQTT, "mqtt.pass", was, f"${want.mqtt_pass_env}"))
    return changes


OWN_LINK = ("enable", "server", "user", "pass", "topic_prefix", "ssl_ca", "use_client_cert")
"""MQTT settings a device reached over the broker needs to stay reachable."""


def _check_reachable(reg: Registration, changes: Sequence[Change]) -> None:
    """Refuse to change the MQTT link of a device kilowatch reaches over that very link: after
    the reboot it would answer on another broker or prefix, or not at all."""
    if reg.transport != "mqtt":
        return
    cut = [c.field for c in changes if c.field.partition(".")[2] in OWN_LINK]
    if cut:
        raise FleetError(
            reg.device,
            f"reached over MQTT only, so changing {', '.join(cut)} would cut kilowatch off "
            "from it; apply those on the LAN (discover it there first), or leave them out of "
            "the profile for this device (--select)",
        )


async def _system_changes(rpc: ShellyRpc, want: Desired) -> list[Change]:
    if not want.system:
        return []
    actual = await rpc.sys_get_config()
    return [
        Change(Step.SYSTEM, "sys." + ".".join(path), _dig(actual, path), value)
        for path, value in want.system.items()
        if _dig(actual, path) != value
    ]


async def _script_changes(rpc: ShellyRpc, want: Desired) -> list[Change]:
    changes = []
    for spec in want.scripts:
        words = script_changes(await script_state(rpc, spec.name), spec)
        if words:
            changes.append(
                Change(
                    Step.SCRIPTS,
                    f"script:{spec.name}",
                    "; ".join(words),
                    f"{spec.size} bytes, sha256 {spec.sha256[:12]}",
                )
            )
    return changes


async def _tls_changes(rpc: ShellyRpc, want: Desired) -> list[Change]:
    if want.tls is None:
        return []
    held = await material_on_device(rpc)
    if held == want.tls.sha256:
        return []
    return [Change(Step.TLS, "tls", held[:12] if held else None, want.tls.sha256[:12])]


def _auth_changes(want: Desired, info: Mapping[str, Any], held: str | None) -> list[Change]:
    auth = want.auth
    if auth is None:
        return []
    if not info.get("auth_en"):
        return [Change(Step.AUTH, "auth", "disabled", "enabled")]
    # The device has a password and answered kilowatch's authenticated reads (a wrong one
    # raised InvalidAuthError before this point), so what kilowatch holds works.
    if auth.mode is AuthMode.ENV and held != auth.password:
        return [Change(Step.AUTH, "auth.password", "(other)", f"${auth.env}")]
    if auth.mode is AuthMode.GENERATE and held is None:
        return [Change(Step.AUTH, "auth.password", "(not held by kilowatch)", "(generated)")]
    return []


def _firmware_changes(
    want: Desired, info: Mapping[str, Any], sys: Mapping[str, Any]
) -> list[Change]:
    spec = want.firmware
    ver = str(info.get("ver") or "")
    if spec is None:
        return []
    if spec.minimum is not None and version_tuple(ver) < version_tuple(spec.minimum):
        return [Change(Step.FIRMWARE, "firmware", ver, f">= {spec.minimum}", advisory=True)]
    if spec.stage is not None:
        offered = (sys.get("available_updates") or {}).get(spec.stage) or {}
        if offered.get("version"):
            target = f"{offered['version']} ({spec.stage})"
            return [Change(Step.FIRMWARE, "firmware", ver, target, advisory=True)]
    return []


async def read_plan(
    rpc: ShellyRpc,
    reg: Registration,
    profile: Profile,
    *,
    passwords: Passwords,
) -> DevicePlan:
    """Read the device behind ``rpc`` and list its drift from ``profile``.

    Raises the ``DeviceError`` family when the device cannot be read (``InvalidAuthError``:
    kilowatch's stored password does not work) and :class:`FleetError` when the profile cannot
    be rendered for it; :func:`failed_plan` makes the plan of such a device."""
    info = await rpc.get_device_info()
    want = desired_state(profile, device_values(reg, info))
    # Sys.GetStatus first: it needs auth, so a wrong stored password shows here.
    sys = await rpc.sys_get_status()
    changes: list[Change] = []
    changes += await _tls_changes(rpc, want)
    mqtt = await _mqtt_changes(rpc, want)
    _check_reachable(reg, mqtt)
    changes += mqtt
    changes += await _system_changes(rpc, want)
    changes += await _script_changes(rpc, want)
    changes += _auth_changes(want, info, await passwords.get(reg))
    if sys.get("restart_required"):
        changes.append(Change(Step.REBOOT, "sys.restart_required", True, False))
    changes += _firmware_changes(want, info, sys)
    return DevicePlan(reg.device, tuple(changes), info=info, desired=want)


def failed_plan(reg: Registration, err: KilowatchError) -> DevicePlan:
    """The plan of a device that could not be read or rendered for."""
    return DevicePlan(reg.device, error=ErrorInfo.of(err))


__all__ = [
    "MQTT_PASS_KEY",
    "STEP_ORDER",
    "Change",
    "Desired",
    "DevicePlan",
    "ErrorInfo",
    "Passwords",
    "Step",
    "desired_state",
    "device_values",
    "failed_plan",
    "kvs_get",
    "mqtt_pass_fingerprint",
    "read_plan",
    "version_tuple",
]
