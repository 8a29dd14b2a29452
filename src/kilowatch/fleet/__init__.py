"""kilowatch.fleet: the automation half: discover, adopt, configure and update Shelly devices.

Built today: ``scripts``, the Shelly scripts kilowatch ships as package data (``hourly_energy.js``).

Planned, not built yet (this room is where that code goes; docs/architecture.md names each):

- ``fleet.rpc``: the device RPC client: aioshelly over HTTP/WebSocket on the LAN, an MQTT transport
  (``<prefix>/rpc``) for remote sites; typed errors; knows nothing of the ledger or the store.
- ``fleet.discovery``: mDNS (``_shelly._tcp``), address-range scans of ``GET /shelly``, devices seen
  on the broker.
- ``fleet.registry``: the device registry kept in the store (and the seed's ``device:<MAC>``,
  ``script:<MAC>`` keys on Redis).
- ``fleet.profiles``: desired state in TOML; ``plan`` (the difference per device) and ``apply``
  (bounded concurrency, ordered steps, retries, a per-device report).
- ``fleet.firmware`` and ``fleet.logs``: staged rollouts; device debug logs and events.

The rule for what goes here: fleet code may use the store, the broker's credentials and the MQTT
codec below it; the web app and the CLI above it call it. The RPC client itself stays free of the
rest of kilowatch, like aioshelly.
"""
