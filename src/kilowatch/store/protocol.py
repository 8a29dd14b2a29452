"""The one store interface. Backends: SQLite (``sqlite:///file.db``), Redis (``redis://``, ``rediss://``)
and Redis Cluster. Every backend passes the same conformance suite
(``tests/store/test_conformance.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from kilowatch.model.messages import Event, LogLine, Reading, fast_frozen_init
from kilowatch.model.slots import ChannelKey, SlotEnergy
from kilowatch.query.energy import EnergyQuery, EnergyRow

if TYPE_CHECKING:
    from kilowatch.query.table import EnergyTable


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """A partial update of a device record: ``None`` fields are left as they are."""

    device: str
    last_seen: float | None = None
    online: bool | None = None
    mac: str | None = None
    model: str | None = None
    gen: int | None = None
    fw_ver: str | None = None
    available_update: str | None = None
    name: str | None = None
    ip: str | None = None
    source: str | None = None
    """Which decoder family saw it: ``shelly``, ``shelly-gen1``, ``tasmota``, ``zigbee2mqtt``,
    ``hourly``."""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device: str
    first_seen: float | None = None
    last_seen: float | None = None
    online: bool | None = None
    mac: str | None = None
    model: str | None = None
    gen: int | None = None
    fw_ver: str | None = None
    available_update: str | None = None
    name: str | None = None
    """The name the device reports about itself; for a device in the fleet registry, the
    registry's name when it has one (what the installer chose)."""
    label: str | None = None
    """The name a user gave it in kilowatch (rename); shown instead of ``name`` when set."""
    room: str | None = None
    """The user's room, else the fleet registry's."""
    ip: str | None = None
    source: str | None = None
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeployedScript:
    """The script kilowatch installed on a device: what the seed's ``script:<MAC>`` key holds."""

    name: str
    version: str | None
    sha256: str
    """Hex SHA-256 of the code as uploaded (after per-device values were filled in)."""
    script_id: int | None = None
    """The device's slot (``Script.Create``'s id)."""
    deployed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Registration:
    """A device in the fleet registry (``kilowatch fleet``): what discovery found and adoption
    decided. In :meth:`Store.register`, ``None`` fields leave what is stored as it is, and ``""``
    clears a text field; ``script=None`` keeps the stored script, a script replaces it whole.

    Secrets are never here: ``credentials`` is a reference into the owner-only secrets file.
    """

    device: str
    """The device id (``shellypmminig3-ecda3bc4ddb0``)."""
    mac: str | None = None
    model: str | None = None
    gen: int | None = None
    fw_ver: str | None = None
    app: str | None = None
    address: str | None = None
    """``host`` or ``host:port`` on the LAN (``None``: reachable over MQTT only)."""
    transport: str | None = None
    """How kilowatch reaches it for RPC: ``lan`` or ``mqtt``."""
    prefix: str | None = None
    """Its MQTT topic prefix."""
    credentials: str | None = None
    """Reference of its secrets (device password, broker password) in the secrets file."""
    name: str | None = None
    room: str | None = None
    discovered_by: str | None = None
    """``scan``, ``mdns`` or ``broker`` (the first that found it)."""
    adopted_at: float | None = None
    seen_at: float | None = None
    """When discovery or an operation last reached it."""
    script: DeployedScript | None = None


@fast_frozen_init  # the pipeline builds one per channel and minute in every batch
@dataclass(frozen=True, slots=True)
class PowerMinute:
    """A channel's mean active power over one UTC minute (the device page's 24-hour chart).

    ``minute`` is a unix time that is a multiple of 60; ``power_w`` the mean of the readings with
    a power value the pipeline saw in ``[minute, minute + 60)``; ``samples`` how many. It is a
    *value*: writing the same minute again replaces it (safe to repeat), so a batch retried or
    replayed after a restart never doubles anything. Stores keep it to the milliwatt. Kept for
    the last :data:`~kilowatch.store.records.POWER_DAYS` (3) UTC days of its channel, and not
    older than the retention setting keeps slots (at most 48 hours are asked for)."""

    device: str
    channel: str
    minute: int
    power_w: float
    samples: int = 1


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One fleet action, for ``kilowatch fleet audit``, ``/api/v1/audit`` and the Audit page.

    ``id`` names the entry: appending an entry whose id is stored already changes nothing (a
    retry after an unknown outcome stores it once); an action that ends appends a second entry
    with its own id (``result`` = the outcome) and ``detail["started"]`` = the first's id.
    ``actor`` says who: ``cli:<os user>``, ``web:<user>``, ``api:<token name>``, ``service``.
    ``action`` is a dotted slug: ``fleet.adopt``, ``fleet.apply``, ``firmware.update``,
    ``credentials.rotate``, ``settings.change``, ``alerts.rules``, ``device.rename``...
    ``result``: ``started``, ``ok``, ``failed``, ``partial``, ``halted``, ``refused``.
    ``detail`` is JSON-able (no secrets: never a password)."""

    id: str
    ts: float
    actor: str
    action: str
    devices: tuple[str, ...] = ()
    result: str = "ok"
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be decoded: kept (bounded) so a user can see what and why."""

    ts: float
    topic: str
    payload: bytes
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Everything one ingest step changes, committed atomically by :meth:`Store.commit`.

    ``slots`` are added to what is stored; ``ledger_states`` replace the saved ledger state of their
    channels (opaque JSON-able dicts owned by ``kilowatch.ledger``), so that after a crash the
    stored energy and the ledger state always agree.

    ``commit_id`` names this batch's commit, fresh for every batch built: committing the *same*
    batch again (a retry after a failure whose outcome was unknown: the reply lost, a cluster
    that took some hash slots' share) stores nothing twice. Retry with the same object; a batch
    built anew is a new commit. It takes no part in equality.
    """

    slots: Sequence[SlotEnergy] = ()
    ledger_states: Mapping[ChannelKey, dict[str, Any]] = field(default_factory=dict)
    devices: Sequence[DeviceUpdate] = ()
    latest: Sequence[Reading] = ()
    events: Sequence[Event] = ()
    logs: Sequence[LogLine] = ()
    dead_letters: Sequence[DeadLetter] = ()
    power: Sequence[PowerMinute] = ()
    """Minute means of power; values that replace what a minute held (see :class:`PowerMinute`)."""
    commit_id: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)


class Store(Protocol):
    """What the rest of kilowatch needs from storage. Use as ``async with open_store(url) as
    store``."""

    url: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self, batch: Batch) -> None:
        """Apply ``batch`` atomically: all of it is stored, or none of it (a Redis Cluster: per
        hash slot, see docs/storage.md). Committing a batch (``commit_id``) that was stored
        already is a no-op, so a commit that failed with an unknown outcome can be retried."""

    async def load_ledger_states(self) -> dict[ChannelKey, dict[str, Any]]:
        """Every saved ledger state, to resume exactly where the last run stopped."""

    async def energy(self, query: EnergyQuery) -> list[EnergyRow]:
        """Energy per bucket; buckets without data are omitted. Rows sorted by start, device,
        channel. (``(await energy_table(query)).rows()``.)"""

    async def energy_table(self, query: EnergyQuery) -> EnergyTable:
        """The same rows column by column: what the API renders to JSON without building a row
        object per bucket."""

    async def use_local_zone(self, tz: str, *, wait: bool = False) -> None:
        """Also keep energy per local day of ``tz`` (the site's zone), so that day and month
        queries in that zone read one rollup row per channel and day instead of correcting UTC
        days with hours. The choice is stored; later commits maintain it. Choosing another zone
        rebuilds the local days from the slots in the background, channel by channel (``wait``:
        return only when done); until then queries take the general path, with the same answers.
        :class:`InvalidQueryError` for an unknown zone."""

    async def drop_slots_before(self, before: int) -> int:
        """Retention: delete the 15-minute slots that start before ``before`` (unix seconds,
        rounded down to a whole UTC hour), keeping every hour, day and local-day rollup: hour,
        day and month answers stay (but hour buckets of a zone with a half-hour offset, which
        need slots), 15-minute answers end there. Also deletes what is kept by time: power
        minutes before that cut, audit entries, events and log lines older than it. Returns how
        many slots were deleted."""

    async def local_days_zone(self) -> str | None:
        """The zone whose local days are built and maintained (``None``: none, or still
        rebuilding)."""

    async def estimated_slots(
        self, *, start: int, end: int, device: str | None = None
    ) -> list[tuple[str, str, int]]:
        """``(device, channel, slot start)`` of every slot marked estimated whose start is in
        ``[start, end)`` (unix seconds), of one device or all, sorted."""

    async def replace_estimated(self, measured: Sequence[SlotEnergy]) -> int:
        """Measured energy for slots that hold estimated energy (rule 7 of
        docs/energy-accounting.md): each slot of ``measured`` that is marked estimated *takes*
        ``import_mwh``/``export_mwh`` as its whole energy (a value, not a delta) and is no longer
        estimated; hours, days, months and local days follow by the difference. A slot that is
        not estimated (measured already, or never written) is left as it is, so a second call
        with the same values changes nothing: safe to repeat after an unknown outcome. Atomic per
        device (all of a device's slots in the call, or none). Returns how many slots took a
        value. ``estimated`` of the values is ignored."""

    async def devices(self) -> list[DeviceRecord]:
        """Every device seen or in the fleet registry (a registered device that never published
        too), by id. The registry fills in what the device's own record lacks (model, gen,
        firmware, MAC, ip from its address, room when the user set none); its ``name`` shows
        over the device's reported one, the user's ``label`` over both."""

    async def device(self, device: str) -> DeviceRecord | None:
        """One device's record as :meth:`devices` shows it; ``None`` if neither seen nor
        registered."""

    async def set_device_label(
        self, device: str, *, label: str | None = None, room: str | None = None
    ) -> None:
        """User's rename / room assignment (``None`` leaves a field as it is, ``""`` clears it)."""

    async def latest(self, device: str | None = None) -> list[Reading]:
        """Last reading of each channel (of one device, or all)."""

    async def events(self, device: str | None = None, limit: int = 100) -> list[Event]: ...

    async def logs(self, device: str | None = None, limit: int = 100) -> list[LogLine]: ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    async def power(self, device: str, *, start: int, end: int) -> list[PowerMinute]:
        """The minute means of ``device``'s channels whose minute is in ``[start, end)`` (unix
        seconds), sorted by channel then minute."""

    async def audit_append(self, entries: Sequence[AuditEntry]) -> None:
        """Add entries to the audit log in one write; an id already stored is skipped (safe to
        repeat). Kept bounded (newest 100 000) and no older than the retention setting allows
        slots. An entry that cannot be stored (a detail that is not JSON-able, nested deeper
        than 254 levels, or an entry over 64 KiB of JSON; an empty id; a time that is not a
        finite number) raises :class:`UnstorableError` naming it, and nothing of the call is
        stored."""

    async def audit(
        self,
        *,
        limit: int = 100,
        device: str | None = None,
        action: str | None = None,
        before: float | None = None,
    ) -> list[AuditEntry]:
        """Newest first (by ``ts``, equal times by id, descending): at most ``limit`` entries,
        of one device (``device`` in its devices), whose action is ``action`` or starts with
        ``action + "."``, older than ``before`` (``ts < before``: page with the last ``ts``)."""

    async def dead_letter_counts(self) -> dict[str, int]:
        """Count of dead letters ever seen, by reason."""

    async def register(self, records: Sequence[Registration]) -> None:
        """Add or update fleet registry entries (``None`` fields keep what is stored, ``""``
        clears a text field; a device named twice ends as the last record says), in one
        transaction (SQLite, one Redis server) or one pipeline (a cluster). On Redis also writes
        the seed's ``device:<MAC>`` (and, with a script, ``script:<MAC>``) hashes; see
        docs/storage.md, "Fleet registry". A record that cannot be stored (a device id that is
        empty, not printable or holds whitespace; a MAC that is not 12 hex digits; a SHA-256
        that is not 64; a value of the wrong type) raises :class:`UnstorableError` naming the
        device and field, and nothing of the call is stored."""

    async def registry(self) -> list[Registration]:
        """Every registered device, sorted by id."""

    async def unregister(self, device: str) -> bool:
        """Remove a device from the registry (its energy and device record stay; on Redis its
        seed ``device:<MAC>`` and ``script:<MAC>`` go); whether it was there."""

    async def get_meta(self, key: str) -> Any | None:
        """A JSON value kept by other parts of kilowatch (settings, users, tokens)."""

    async def put_meta(self, key: str, value: Any) -> None: ...


__all__ = [
    "AuditEntry",
    "Batch",
    "DeadLetter",
    "DeployedScript",
    "DeviceRecord",
    "DeviceUpdate",
    "PowerMinute",
    "Registration",
    "Store",
]
