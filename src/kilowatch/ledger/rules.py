"""The numbers behind the ledger's rules, in one place (docs/energy-accounting.md explains each).

Time inside the ledger is integer milliseconds and energy integer milliwatt-hours, so every rule is
exact integer arithmetic and a restarted ledger computes bit-for-bit what the old one would have.
"""

from __future__ import annotations

from kilowatch.model.slots import SLOT_SECONDS

SLOT_MS = SLOT_SECONDS * 1000

ROUNDING_TOLERANCE_MWH = 10_000
"""A counter drop of at most 10 Wh is a rounding artefact, not a reset.

Sources round their counters differently (Shelly: Wh with 3 decimals; Tasmota: kWh with 3 decimals,
i.e. 1 Wh steps; some Zigbee2MQTT devices: kWh with 2 decimals, i.e. 10 Wh steps), and a decoder
may see one counter at two precisions. Calling a rounding dip a reset would count the whole counter
a second time; calling a small reset a dip loses at most this much, so the tolerance is generous.
"""

GAP_MS = SLOT_MS
"""Readings further apart than one slot (15 min) leave a gap: a whole slot may have passed without a
reading, so the split of that energy is inferred and the slots are marked ``estimated``. Normal
periods (30 s Gen1, 60 s Gen2+, 300 s Tasmota ``TelePeriod``, even two lost Tasmota messages) stay
below.
"""

MAX_JUMP_MS = 86_400 * 1000
"""A reading more than one day ahead of the newest one seen is held until a second reading confirms
the new time (a device clock gone wrong must not stop the channel; a device back after a long
outage loses nothing: the confirming reading arrives a minute later)."""

ON_TIME_MS = 1000
"""A reading stamped on receipt (no time of its own in the payload) that arrives at least 1 s after
the previous reading of its counter came at a device's pace, and its stamp is taken as its time.
Devices report every 30 s (Gen1), every 10 s or more (Tasmota ``TelePeriod``), on change at most
about once a second (Zigbee2MQTT, Shelly ``status/<component>``); a broker delivering a backlog
hands over readings taken minutes apart within milliseconds, so closer ones may be late (rule 12).
"""

MAX_POWER_W = 1_000_000
"""A counter rising faster than 1 MW on average is not measuring energy (the largest meter kilowatch
reads, a Shelly Pro 3EM-400, tops out near 3 x 400 A x 230 V = 276 kW)."""

MIN_TS = 946_684_800.0
"""2000-01-01T00:00Z. Earlier timestamps come from an unsynchronised clock (1970 + uptime)."""

MAX_TS = 7_258_118_400.0
"""2200-01-01T00:00Z. Later timestamps are garbage, not data."""

MAX_COUNTER_WH = 1e12
"""1 TWh: no single meter channel ever counts that much; larger values are decoding garbage."""

INTERVAL_WINDOW_S = 7 * 86_400
"""Interval messages are remembered for 7 days behind the newest interval start of their channel; an
interval starting earlier than that is rejected (it cannot be told apart from a replay)."""

MAX_INTERVAL_S = 86_400
"""An interval longer than one day is not what any metering script sends; it is rejected."""

__all__ = [
    "GAP_MS",
    "INTERVAL_WINDOW_S",
    "MAX_COUNTER_WH",
    "MAX_INTERVAL_S",
    "MAX_JUMP_MS",
    "MAX_POWER_W",
    "MAX_TS",
    "MIN_TS",
    "ON_TIME_MS",
    "ROUNDING_TOLERANCE_MWH",
    "SLOT_MS",
]
