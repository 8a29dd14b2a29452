"""kilowatch.fleet: the automation half: discover, adopt and configure Shelly devices.

- ``rpc``: the device RPC client (:class:`~kilowatch.fleet.rpc.ShellyRpc` over the LAN with
  aioshelly, or over MQTT for remote sites); typed errors; knows nothing of the rest of kilowatch.
- ``discovery`` and ``mdns``: address-range scans of ``GET /shelly``, mDNS (``_shelly._tcp``),
  devices online on the broker.
- ``registry``: found devices into the store's registry, selections, an RPC client per registered
  device; ``secrets``: the owner-only secrets file.
- ``adopt``: from a new device to metering in one call.
- ``profile``, ``plan``, ``apply``: desired state in TOML, the drift per device, convergence with
  bounded concurrency, ordered steps, retries and a per-device report.
- ``scriptdeploy`` and ``tlsmaterial``: the device-side steps for scripts and TLS material.
- ``scripts``: the Shelly scripts kilowatch ships as package data (``hourly_energy.js``).
- ``logs``: devices' debug-log lines and events as the store keeps them, followed by stored order
  (``kilowatch logs --follow``, the device page).

Planned (issue "Fleet II"): ``firmware`` (staged rollouts).

The rule for what goes here: fleet code may use the store and the broker's credentials below it;
the web app and the CLI above it call it. The RPC client stays free of the rest of kilowatch, like
aioshelly (tests/test_architecture.py checks it).
"""
