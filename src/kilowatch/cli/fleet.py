"""``kilowatch fleet``: discover, adopt and configure Shelly devices.

One module per part of the group, each with ``register(group)``: ``fleet_discover`` (discover,
list), ``fleet_adopt`` (adopt), ``fleet_profiles`` (plan, apply), ``fleet_firmware`` (firmware
check, update), ``fleet_audit`` (audit).
"""

from __future__ import annotations

import typer

from kilowatch.cli import fleet_adopt, fleet_audit, fleet_discover, fleet_firmware, fleet_profiles


def register(app: typer.Typer) -> None:
    """Add the ``fleet`` command group to ``app``."""
    group = typer.Typer(
        help="Discover, adopt and configure Shelly devices, one or hundreds at a time.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="fleet")
    fleet_discover.register(group)
    fleet_adopt.register(group)
    fleet_profiles.register(group)
    fleet_firmware.register(group)
    fleet_audit.register(group)
