"""Alerts: rules over the store's devices, power and energy (offline, power above a threshold,
daily budget, firmware update failed), their states (pending → firing → resolved) and the
channels that deliver notifications (signed webhook, e-mail, push). See docs/alerts.md.

The configuration and the states are re-exported here; the I/O halves (``channels``: the
``Sender``; ``engine``: the ``AlertEngine``) are imported from their modules, so reading a
configuration does not load the HTTP and SMTP clients."""

from kilowatch.alerts.config import (
    AlertsConfig,
    Channel,
    Rule,
    config_to_json,
    load_config,
    parse_config,
    save_config,
)
from kilowatch.alerts.state import AlertRecord, AlertState, DeliveryResult, current, history

__all__ = [
    "AlertRecord",
    "AlertState",
    "AlertsConfig",
    "Channel",
    "DeliveryResult",
    "Rule",
    "config_to_json",
    "current",
    "history",
    "load_config",
    "parse_config",
    "save_config",
]
