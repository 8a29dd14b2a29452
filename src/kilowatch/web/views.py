"""What the pages and the API show, computed from the store: devices, power now, the overview."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kilowatch.model.messages import Event, Reading
from kilowatch.query.energy import EnergyQuery
from kilowatch.store.protocol import DeviceRecord, Store
from kilowatch.web.energy import period_start, row_costs, shift_period
from kilowatch.web.site import SiteSettings

OFFLINE_AFTER_S = 15 * 60
"""A device that says nothing for 15 minutes counts as offline even without a last-will message."""
FIRST_INSTANT = datetime(1, 1, 1, tzinfo=UTC).timestamp()
LAST_INSTANT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
"""The unix times a ``datetime`` can hold (years 1 to 9999)."""


def instant(ts: float | None) -> float | None:
    """``ts`` if it is a time a clock can show, else ``None``: a device's clock may send anything
    (1e308, -inf, nan), and ``datetime.fromtimestamp`` raises on what it cannot hold."""
    if isinstance(ts, int | float) and FIRST_INSTANT <= ts <= LAST_INSTANT:  # False for nan
        return float(ts)
    return None


def message_json(message: Reading | Event) -> dict[str, Any]:
    """The public JSON of a stored reading or event; a ``ts`` no clock can show is left out, like
    every field the message did not carry."""
    out = message.to_json()
    if "ts" in out and instant(out["ts"]) is None:
        del out["ts"]
    return out


def top_level(readings: Iterable[Reading]) -> list[Reading]:
    """Readings whose channel is not a part (``em:0/a``) of a channel that is present (``em:0``):
    the parent already holds the parts' sum (docs/architecture.md "Names")."""
    readings = list(readings)
    present = {r.channel for r in readings}
    return [
        r for r in readings if "/" not in r.channel or r.channel.split("/", 1)[0] not in present
    ]


def power_now(readings: Iterable[Reading]) -> float | None:
    """One device's power now: its channels' sum, a part (``em:0/a``) counted only when its
    whole (``em:0``) reports no power (its latest message may have carried only energy)."""
    with_power = [r for r in readings if r.power_w is not None]
    values = [r.power_w for r in top_level(with_power) if r.power_w is not None]
    return sum(values) if values else None


def label_changes(
    rec: DeviceRecord, label: str | None, room: str | None
) -> dict[str, dict[str, str | None]]:
    """A rename's changes, for the audit log: ``{"label"/"room": {"from", "to"}}`` of those
    that differ (``None``: left as is)."""
    out: dict[str, dict[str, str | None]] = {}
    for key, old, new in (("label", rec.label, label), ("room", rec.room, room)):
        if new is not None and (old or "") != new:
            out[key] = {"from": old, "to": new or None}
    return out


def display_name(rec: DeviceRecord) -> str:
    return rec.label or rec.name or rec.device


def is_online(rec: DeviceRecord, now: float) -> bool:
    last_seen = instant(rec.last_seen)
    if rec.online is False:
        return False
    if last_seen is None:
        return bool(rec.online)
    return now - last_seen < OFFLINE_AFTER_S


def device_json(
    rec: DeviceRecord, readings: Sequence[Reading], energy_today_wh: float | None, now: float
) -> dict[str, Any]:
    return {
        "device": rec.device,
        "display_name": display_name(rec),
        "name": rec.name,
        "label": rec.label,
        "room": rec.room,
        "model": rec.model,
        "gen": rec.gen,
        "mac": rec.mac,
        "ip": rec.ip,
        "source": rec.source,
        "fw_ver": rec.fw_ver,
        "available_update": rec.available_update,
        "online": is_online(rec, now),
        "first_seen": instant(rec.first_seen),
        "last_seen": instant(rec.last_seen),
        "channels": list(rec.channels),
        "power_w": power_now(readings),
        "energy_today_wh": energy_today_wh,
    }


async def devices_table(store: Store, site: SiteSettings, now: float) -> list[dict[str, Any]]:
    """Every device with its power now and energy today (three store calls, whatever the count)."""
    records = await store.devices()
    latest = await store.latest()
    by_device: dict[str, list[Reading]] = defaultdict(list)
    for r in latest:
        by_device[r.device].append(r)
    today = await energy_by_device(store, site, "day", now)
    out = [
        device_json(rec, by_device.get(rec.device, []), today.get(rec.device), now)
        for rec in records
    ]
    for d in out:
        d["grid_meter"] = d["device"] in site.grid_meters
    return out


async def energy_by_device(
    store: Store, site: SiteSettings, by: str, now: float
) -> dict[str, float]:
    """Imported Wh per device in the current local day (``by="day"``) or month (``"month"``)."""
    tz = site.zone
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    start = period_start("hour" if by == "day" else "day", local)
    end = shift_period("hour" if by == "day" else "day", start, 1)
    rows = await store.energy(
        EnergyQuery(
            by="day" if by == "day" else "month", tz=site.tz, start=start, end=end, group="device"
        )
    )
    out: dict[str, float] = defaultdict(float)
    for r in rows:
        if r.device is not None:
            out[r.device] += r.energy_wh
    return dict(out)


@dataclass(frozen=True, slots=True)
class PeriodTotal:
    label: str
    start: datetime
    end: datetime
    energy_wh: float
    returned_energy_wh: float
    cost: float
    estimated: bool


async def period_total(
    store: Store, site: SiteSettings, label: str, start: datetime, end: datetime
) -> PeriodTotal:
    """The site's energy in ``[start, end)``: its grid meters' when it has any (the sub-meters
    behind them measure the same energy again), else every device's."""
    query = EnergyQuery(
        by="day", tz=site.tz, start=start, end=end, devices=site.grid_meters, group="total"
    )
    rows = await store.energy(query)
    costs = await row_costs(store, query, rows, site.tariff)
    return PeriodTotal(
        label=label,
        start=start,
        end=end,
        energy_wh=sum(r.energy_wh for r in rows),
        returned_energy_wh=sum(r.returned_energy_wh for r in rows),
        cost=sum(costs),
        estimated=any(r.estimated for r in rows),
    )


async def overview(store: Store, site: SiteSettings, now: float) -> dict[str, Any]:
    """Today, this month, last month; live power; biggest consumers this month; offline devices."""
    tz = site.zone
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    day = period_start("hour", local)
    month = period_start("day", local)
    periods = [
        await period_total(store, site, "Today", day, shift_period("hour", day, 1)),
        await period_total(store, site, "This month", month, shift_period("day", month, 1)),
        await period_total(store, site, "Last month", shift_period("day", month, -1), month),
    ]
    devices = await devices_table(store, site, now)
    month_by_device = await energy_by_device(store, site, "month", now)
    names = {d["device"]: d["display_name"] for d in devices}
    grid = set(site.grid_meters)
    consumers = sorted(
        ((dev, wh) for dev, wh in month_by_device.items() if wh > 0 and dev not in grid),
        key=lambda kv: -kv[1],
    )[:10]
    # the site's power: its grid meters' when it has any (as for energy)
    powers = [
        d["power_w"]
        for d in devices
        if d["power_w"] is not None and d["online"] and (not grid or d["device"] in grid)
    ]
    return {
        "tz": site.tz,
        "currency": site.tariff.currency,
        "tariff_set": site.has_tariff,
        "periods": [
            {
                "label": p.label,
                "from": p.start.isoformat(),
                "to": p.end.isoformat(),
                "energy_wh": p.energy_wh,
                "returned_energy_wh": p.returned_energy_wh,
                "cost": round(p.cost, 4),
                "estimated": p.estimated,
            }
            for p in periods
        ],
        "power_w": sum(powers) if powers else None,
        "devices": len(devices),
        "online": sum(1 for d in devices if d["online"]),
        "consumers": [
            {"device": dev, "display_name": names.get(dev, dev), "energy_wh": wh}
            for dev, wh in consumers
        ],
        "offline": [
            {"device": d["device"], "display_name": d["display_name"], "last_seen": d["last_seen"]}
            for d in devices
            if not d["online"]
        ],
    }


__all__ = [
    "OFFLINE_AFTER_S",
    "device_json",
    "devices_table",
    "display_name",
    "energy_by_device",
    "instant",
    "is_online",
    "label_changes",
    "message_json",
    "overview",
    "power_now",
    "top_level",
]
