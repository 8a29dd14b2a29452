"""Device models the simulator offers, identity data from shelly-api.md §1 (aioshelly const)."""

from __future__ import annotations

from dataclasses import dataclass

from shellysim.profiles import LoadKind


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A Shelly model: id prefix, model code, app name, generation, firmware, metered channels."""

    key: str
    prefix: str
    model: str
    app: str
    gen: int
    ver: str
    fw_id: str
    channels: int
    default_loads: tuple[LoadKind, ...]
    profile: str | None = None


MODELS: dict[str, ModelSpec] = {
    "pm1": ModelSpec(
        "pm1", "shellypmminig3", "S3PM-001PCEU16", "MiniPMG3", 3,
        "1.4.4", "20241011-114455/1.4.4-g6d2a586", 1, (LoadKind.BOILER,),
    ),
    "switch": ModelSpec(
        "switch", "shellyplus1pm", "SNSW-001P16EU", "Plus1PM", 2,
        "1.4.4", "20241011-114449/1.4.4-g6d2a586", 1, (LoadKind.AIR_CONDITIONER,),
    ),
    "plug": ModelSpec(
        "plug", "shellyplusplugs", "SNPL-00112EU", "PlusPlugS", 2,
        "1.4.4", "20241011-114450/1.4.4-g6d2a586", 1, (LoadKind.FRIDGE,),
    ),
    "3em": ModelSpec(
        "3em", "shellypro3em", "SPEM-003CEBEU", "Pro3EM", 2,
        "1.4.4", "20241011-114452/1.4.4-g6d2a586", 3,
        (LoadKind.BOILER, LoadKind.BASE, LoadKind.AIR_CONDITIONER), "triphase",
    ),
    "em": ModelSpec(
        "em", "shellyproem50", "SPEM-002CEBEU50", "ProEM", 2,
        "1.4.4", "20241011-114453/1.4.4-g6d2a586", 2, (LoadKind.BASE, LoadKind.PV),
    ),
}  # fmt: skip
"""Keyed by the names ``--models`` accepts."""

NEXT_FIRMWARE = {
    "stable": ("1.5.1", "20250225-124101/1.5.1-g0dcd6e0"),
    "beta": ("1.6.0-beta2", "20250417-090733/1.6.0-beta2-gd3a2a9c"),
}
"""What ``Shelly.CheckForUpdate`` offers a device still on the models' firmware."""


def model_spec(name: str) -> ModelSpec:
    """The spec for ``name`` (``pm1``, ``switch``, ``plug``, ``3em``, ``em``)."""
    try:
        return MODELS[name]
    except KeyError:
        from shellysim.errors import SimConfigError

        known = ", ".join(MODELS)
        raise SimConfigError(f"unknown device model {name!r}; choose from {known}") from None


def mac_for(seed: int, index: int) -> str:
    """A stable, unique, locally administered MAC (12 upper-case hex, no separators)."""
    value = (0x02 << 40) | ((seed & 0xFFFF) << 24) | (index & 0xFFFFFF)
    return f"{value:012X}"
