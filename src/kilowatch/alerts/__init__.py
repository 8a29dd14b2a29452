"""Alerts: rules over the store's devices, power and energy (offline, power above a threshold,
daily budget, firmware update failed), their states (pending → firing → resolved) and the
channels that deliver notifications (signed webhook, e-mail, push). See docs/alerts.md."""
