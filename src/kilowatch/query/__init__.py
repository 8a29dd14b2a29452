"""kilowatch.query: what a user asks of the stored energy, and the pure maths of the answer.

``energy``: ``EnergyQuery`` and ``EnergyRow``; ``periods``: local-time buckets as UTC slot ranges
(DST-exact), ``LocalDays``; ``grouping``: the rules that turn per-channel sums into rows (parts of a
meter, the ``hourly`` channel); ``table``: ``EnergyTable``, answers column by column and their JSON;
``tariff``: prices and cost; ``ranges``: the range a query covers when ``from`` or ``to`` is left
out. No I/O: every backend of :mod:`kilowatch.store` uses these.
"""

from kilowatch.query.energy import Bucket, EnergyQuery, EnergyRow, Grouping
from kilowatch.query.periods import LocalDays, Plan, plan
from kilowatch.query.ranges import query_range
from kilowatch.query.table import EnergyTable
from kilowatch.query.tariff import Tariff

__all__ = [
    "Bucket",
    "EnergyQuery",
    "EnergyRow",
    "EnergyTable",
    "Grouping",
    "LocalDays",
    "Plan",
    "Tariff",
    "plan",
    "query_range",
]
