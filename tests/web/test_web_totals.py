"""Totals count each meter's energy once: the three-phase meter of the known data (em:0 and its
phases em:0/a|b|c, webseed.py) in the API's totals, its cost, and the pages' totals."""

from __future__ import annotations

import re

import httpx
import pytest
from webseed import EM, PLUG

GROUPS = ("channel", "device", "total")
EM_DAY_WH, EM_DAY_OUT_WH = 60.0 * 12, 7.0 * 12
"""The meter on 15 March: em:0 = a + b + c = 60 Wh an hour, 7 Wh out, for 12 hours."""
PLUG_DAY_WH = sum(100.0 + 10 * h for h in range(12))


async def totals(c: httpx.AsyncClient, **params: str) -> dict[str, dict[str, object]]:
    """The ``totals`` of one question in every grouping."""
    out = {}
    for group in GROUPS:
        r = await c.get("/api/v1/energy", params={**params, "group": group})
        assert r.status_code == 200, r.text
        out[group] = r.json()["totals"]
    return out


@pytest.mark.parametrize("by", ["15min", "hour", "day", "month"])
async def test_the_meter_by_channel_totals_what_it_measured(
    viewer: tuple[httpx.AsyncClient, str], by: str
) -> None:
    c, _ = viewer
    got = await totals(c, by=by, **{"from": "2026-03-15"}, device=EM)
    assert got["channel"] == got["device"] == got["total"]
    assert got["total"] == {
        "energy_wh": EM_DAY_WH,
        "returned_energy_wh": EM_DAY_OUT_WH,
        "estimated": False,
    }
    # every device: the plug and the meter, once
    got = await totals(c, by=by, **{"from": "2026-03-15", "to": "2026-03-16"})
    assert got["channel"] == got["device"] == got["total"]
    assert got["channel"]["energy_wh"] == PLUG_DAY_WH + EM_DAY_WH
    # the rows by channel still hold the meter and its phases
    r = await c.get("/api/v1/energy", params={"by": "day", "from": "2026-03-15", "device": EM})
    assert {row["channel"]: row["energy_wh"] for row in r.json()["rows"]} == {
        "em:0": 720.0, "em:0/a": 120.0, "em:0/b": 240.0, "em:0/c": 360.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "periods", [[], [{"start": "22:00", "end": "06:00", "price": 0.10}]], ids=["flat", "night"]
)
async def test_the_cost_of_the_totals_counts_the_meter_once(
    admin: tuple[httpx.AsyncClient, str], periods: list[dict[str, object]]
) -> None:
    c, csrf = admin
    tariff = {"currency": "EUR", "price": 0.30, "export_price": 0.10, "periods": periods}
    r = await c.patch("/api/v1/settings", json={"tariff": tariff}, headers={"x-csrf-token": csrf})
    assert r.status_code == 200, r.text
    got = await totals(c, by="hour", cost="true", **{"from": "2026-03-15"}, device=EM)
    assert got["channel"]["cost"] == pytest.approx(got["total"]["cost"])
    assert got["device"]["cost"] == pytest.approx(got["total"]["cost"])
    night = 6 * 60.0 / 1000 * (0.10 if periods else 0.30)
    day = 6 * 60.0 / 1000 * 0.30
    assert got["total"]["cost"] == pytest.approx(night + day - EM_DAY_OUT_WH / 1000 * 0.10)
    page = await c.get("/energy?by=hour&view=channel")
    cost = f"{night + day - EM_DAY_OUT_WH / 1000 * 0.10 + plug_cost(bool(periods)):,.2f} EUR"
    assert f"Cost <strong>{cost}</strong>" in page.text


def plug_cost(night: bool) -> float:
    """The plug's cost on 15 March with the tests' tariffs."""
    early = sum(100.0 + 10 * h for h in range(6)) / 1000 * (0.10 if night else 0.30)
    return early + sum(100.0 + 10 * h for h in range(6, 12)) / 1000 * 0.30


def page_totals(html: str) -> tuple[float, list[float]]:
    """The page's total import, and each bucket's (the chart table's Import column)."""
    total = re.search(r'id="totals" data-import-wh="([^"]+)"', html)
    assert total is not None
    buckets = re.findall(r'<tr data-start="[^"]+" data-import-wh="([^"]+)"', html)
    return float(total.group(1)), [float(b) for b in buckets]


async def test_the_pages_count_the_meter_once(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    # the Energy page today (the tests' clock: 15 March), by channel / phase and in total
    for view in ("channel", "device", "total"):
        total, hours = page_totals((await c.get(f"/energy?by=hour&view={view}")).text)
        assert total == PLUG_DAY_WH + EM_DAY_WH, view
        assert hours == [160.0 + 10 * h if h < 12 else 0.0 for h in range(24)], view
    # the meter's own page shows its energy by channel
    total, hours = page_totals((await c.get(f"/devices/{EM}")).text)
    assert total == EM_DAY_WH
    assert hours == [60.0 if h < 12 else 0.0 for h in range(24)]
    total, days = page_totals((await c.get(f"/devices/{EM}?by=day")).text)
    assert (total, days[14]) == (EM_DAY_WH, EM_DAY_WH)
    total, _ = page_totals((await c.get(f"/devices/{PLUG}")).text)
    assert total == PLUG_DAY_WH
