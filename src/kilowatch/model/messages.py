"""What decoders make of a message: normalised, unit-converted values (BRIEF "Public contracts").

Units out: Wh, W, V, A, Hz, VA, var. A field the message does not carry is ``None`` and absent from
``to_json()``, never zero. ``device`` is the identity the message itself shows: the ``src`` of an
RPC frame, else the device part of the topic.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

_T = TypeVar("_T")


def fast_frozen_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass a faster ``__init__`` with the same signature.

    The generated ``__init__`` of a frozen dataclass calls ``object.__setattr__`` once per field;
    here each field is set through its slot descriptor instead, about twice as fast (decoders and
    the ledger build one object per reading, so it shows in ingest). Equality, ``repr``,
    immutability and ``dataclasses.replace`` are untouched. Fields with a ``default_factory``
    are not supported (the class is returned unchanged).
    """
    params: list[str] = []
    body: list[str] = []
    namespace: dict[str, Any] = {}
    for i, f in enumerate(fields(cls)):  # type: ignore[arg-type]
        if f.default_factory is not MISSING or not f.init:
            return cls
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"_d{i}"] = f.default
            params.append(f"{f.name}=_d{i}")
        namespace[f"_s{i}"] = getattr(cls, f.name).__set__
        body.append(f"    _s{i}(self, {f.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(source, namespace)  # code built from the class's own field names, nothing external
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning to a method
    return cls


class _JsonMixin:
    __slots__ = ()
    kind: ClassVar[str]
    _not_json: ClassVar[frozenset[str]] = frozenset()
    """Fields for kilowatch's own use, left out of the public JSON shape."""

    def to_json(self) -> dict[str, Any]:
        """The public JSON shape: ``kind`` first, then every field that is not ``None``."""
        out: dict[str, Any] = {"kind": self.kind}
        skip = self._not_json
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None and f.name not in skip:
                out[f.name] = value
        return out


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class Reading(_JsonMixin):
    """Instantaneous metrics and cumulative counters of one channel at one instant."""

    device: str
    channel: str
    ts: float
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    frequency_hz: float | None = None
    energy_wh: float | None = None
    """Cumulative imported (consumed) energy counter, Wh."""
    returned_energy_wh: float | None = None
    """Cumulative exported (returned) energy counter, Wh."""
    apparent_power_va: float | None = None
    reactive_power_var: float | None = None
    power_factor: float | None = None
    stamped_on_receipt: bool = False
    """``ts`` is the time kilowatch received the message, not a time the device gave: the payload
    carries none (Gen1, Tasmota, Zigbee2MQTT, Shelly ``status/<component>``). A broker's backlog
    delivers such readings all at once; the ledger then reads their counters as late, not as
    impossibly fast (docs/energy-accounting.md, rule 12). Not part of the public JSON shape."""

    kind: ClassVar[str] = "reading"
    _not_json: ClassVar[frozenset[str]] = frozenset({"stamped_on_receipt"})


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class Interval(_JsonMixin):
    """Energy measured over ``[start, end)`` (unix seconds), e.g. one hour of the metering
    script."""

    device: str
    channel: str
    start: int
    end: int
    energy_wh: float
    returned_energy_wh: float = 0.0

    kind: ClassVar[str] = "interval"


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class Availability(_JsonMixin):
    """The device said it is online or offline (``<prefix>/online``, Tasmota ``LWT``...)."""

    device: str
    online: bool
    ts: float

    kind: ClassVar[str] = "availability"


@dataclass(frozen=True, slots=True)
class Event(_JsonMixin):
    """A device event (``NotifyEvent`` item): ``ota_progress``, ``config_changed``, a script
    event..."""

    device: str
    ts: float
    component: str
    event: str
    data: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "event"


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class DeviceInfo(_JsonMixin):
    """What a message tells about the device itself (model, firmware, MAC, name, uptime)."""

    device: str
    ts: float
    mac: str | None = None
    model: str | None = None
    gen: int | None = None
    fw_ver: str | None = None
    name: str | None = None
    uptime_s: int | None = None
    ip: str | None = None
    available_update: str | None = None

    kind: ClassVar[str] = "device_info"


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class LogLine(_JsonMixin):
    """One debug log line (``<device id> <seq> <unix ts> <level>|<file:line> <message>``)."""

    device: str
    ts: float
    message: str
    level: int | None = None
    seq: int | None = None
    source: str | None = None

    kind: ClassVar[str] = "log"


Message = Reading | Interval | Availability | Event | DeviceInfo | LogLine

__all__ = ["Availability", "DeviceInfo", "Event", "Interval", "LogLine", "Message", "Reading"]
