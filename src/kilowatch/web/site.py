"""Site settings a user edits in the web app: time zone, tariff, retention (kept in store meta)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kilowatch.errors import ConfigError
from kilowatch.query.tariff import Tariff
from kilowatch.service.retention import SITE_KEY
from kilowatch.store.audit import audited
from kilowatch.store.protocol import Store

MAX_RETENTION_DAYS = 100 * 366
MAX_GRID_METERS = 20
MAX_DEVICE_ID = 200


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Europe/Berlin``), or ``ConfigError`` saying how to spell one."""
    name = name.strip()
    if not name or len(name) > 64 or ".." in name or name.startswith("/"):
        raise ConfigError(f"time zone {name!r} is not an IANA name such as Europe/Berlin or UTC")
    try:
        return ZoneInfo(name)
    # a folder of the tz database ("Europe", "America") is an IsADirectoryError
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"time zone {name!r} is unknown; use an IANA name such as Europe/Berlin"
        ) from None


@dataclass(frozen=True, slots=True)
class SiteSettings:
    tz: str = "UTC"
    tariff: Tariff = field(default_factory=Tariff)
    retention_days: int | None = None
    """Keep slot energy this many days (``None``: forever). The store's retention job reads it."""
    grid_meters: tuple[str, ...] = ()
    """Devices that meter the whole site at the grid connection (a Pro 3EM on the mains). When
    set, site totals (the overview, the Energy page's total) are theirs alone: adding them to
    the sub-meters behind them would count the same energy twice."""

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.tz)

    @property
    def has_tariff(self) -> bool:
        """Whether a tariff is set: a price, an export price or a time-of-use period. Without one
        the pages show no cost (a "0.00" would claim the energy was free)."""
        t = self.tariff
        return bool(t.price or t.export_price or t.periods)

    def to_json(self) -> dict[str, Any]:
        return {
            "tz": self.tz,
            "tariff": self.tariff.to_json(),
            "retention_days": self.retention_days,
            "grid_meters": list(self.grid_meters),
        }

    def updated(self, data: Mapping[str, Any]) -> SiteSettings:
        """A copy with the fields present in ``data`` validated and replaced (a PATCH)."""
        if not isinstance(data, Mapping):
            raise ConfigError("settings must be a JSON object")
        unknown = set(data) - {"tz", "tariff", "retention_days", "grid_meters"}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        out = self
        if "tz" in data:
            tz = data["tz"]
            if not isinstance(tz, str):
                raise ConfigError("tz must be a time zone name such as Europe/Berlin or UTC")
            zone(tz)
            out = replace(out, tz=tz.strip())
        if "tariff" in data:
            out = replace(out, tariff=Tariff.from_json(data["tariff"]))
        if "retention_days" in data:
            out = replace(out, retention_days=_retention(data["retention_days"]))
        if "grid_meters" in data:
            out = replace(out, grid_meters=_grid_meters(data["grid_meters"]))
        return out


def _grid_meters(value: Any) -> tuple[str, ...]:
    """A list of device ids (or one string of them, comma- or line-separated: the form)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.replace("\n", ",").split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError("grid_meters must be a list of device ids")
    ids = tuple(dict.fromkeys(v.strip() for v in value if v.strip()))
    if len(ids) > MAX_GRID_METERS:
        raise ConfigError(f"grid_meters: at most {MAX_GRID_METERS} devices")
    for device in ids:
        if len(device) > MAX_DEVICE_ID or not device.isprintable() or " " in device:
            raise ConfigError(f"grid_meters: {device[:40]!r} is not a device id")
    return ids


def _retention(value: Any) -> int | None:
    """Days as a whole number (the form sends text), or ``None`` for forever. Never ``int()`` of
    any float: ``int(inf)`` raises OverflowError, ``int(1.9)`` would be 1."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"retention_days {value[:20]!r} is not a whole number") from None
    elif isinstance(value, float) and value.is_integer():  # False for inf and nan
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"retention_days must be a whole number of days (1–{MAX_RETENTION_DAYS}), "
            "or null to keep energy forever"
        )
    if not 1 <= value <= MAX_RETENTION_DAYS:
        shown = str(value) if abs(value) < 10**12 else f"{str(value)[:6]}…"
        raise ConfigError(f"retention_days {shown} must be between 1 and {MAX_RETENTION_DAYS}")
    return value


def changes(old: SiteSettings, new: SiteSettings) -> dict[str, dict[str, Any]]:
    """What a save changes, for the audit log: ``{setting: {"from": old, "to": new}}`` of the
    settings that differ (the tariff as one; settings hold no secrets)."""
    before, after = old.to_json(), new.to_json()
    return {
        key: {"from": before[key], "to": after[key]}
        for key in after
        if before.get(key) != after[key]
    }


async def load_site(store: Store, *, default_tz: str) -> SiteSettings:
    data = await store.get_meta(SITE_KEY)
    base = SiteSettings(tz=default_tz)
    if not isinstance(data, dict):
        return base
    try:
        return base.updated(data)
    except ConfigError:
        # Stored settings were valid when written; a tz database change must not take the app down.
        return base


async def save_site(store: Store, site: SiteSettings) -> None:
    await store.put_meta(SITE_KEY, site.to_json())
    # day and month answers in the site's zone read the store's local days: a new zone has its
    # days rebuilt in the background (a no-op when the zone did not change)
    await store.use_local_zone(site.tz)


async def change_site(store: Store, actor: str, old: SiteSettings, new: SiteSettings) -> None:
    """Save ``new`` in place of ``old``, audited as ``settings.change`` by ``actor`` with what
    :func:`changes` (nothing is written, nor audited, when nothing changed)."""
    changed = changes(old, new)
    if changed:
        async with audited(store, actor, "settings.change", detail=changed) as act:
            await save_site(store, new)
            act.detail.update(changed)  # the outcome says what changed too


__all__ = [
    "MAX_RETENTION_DAYS",
    "SITE_KEY",
    "SiteSettings",
    "change_site",
    "changes",
    "load_site",
    "save_site",
    "zone",
]
