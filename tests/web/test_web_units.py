"""Pure parts of the web app: chart series, energy parameters, the login limiter, metrics text."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from kilowatch.accounts.sessions import LoginLimiter
from kilowatch.errors import Problem
from kilowatch.model.messages import Reading
from kilowatch.query.energy import EnergyQuery
from kilowatch.query.grouping import Flat, channel_totals, shadow_hourly
from kilowatch.query.periods import plan
from kilowatch.query.table import EnergyTable
from kilowatch.store.protocol import DeviceRecord
from kilowatch.web.energy import Report, build_query
from kilowatch.web.metrics import render
from kilowatch.web.pages import chart_data
from kilowatch.web.views import power_now

BERLIN = ZoneInfo("Europe/Berlin")


def row(device: str, channel: str, hour: int, wh: float, day: int = 29) -> Flat:
    """An hour row as a store returns it: (UTC start, device, channel, mWh in, mWh out, est)."""
    start = int(datetime(2026, 3, day, tzinfo=BERLIN).timestamp()) + 3600 * hour
    return (start, device, channel, round(wh * 1000), 0, 0)


def test_chart_of_a_dst_day_has_23_hours_and_no_double_counting() -> None:
    query = EnergyQuery(
        by="hour",
        tz="Europe/Berlin",
        start=datetime(2026, 3, 29, tzinfo=BERLIN),
        end=datetime(2026, 3, 30, tzinfo=BERLIN),
        group="channel",
    )
    rows = [
        row("em", "em:0", 0, 60.0),
        row("em", "em:0/a", 0, 10.0),
        row("em", "em:0/b", 0, 50.0),
        row("plug", "switch:0", 1, 5.0),
        row("plug", "hourly", 1, 5.0),  # the same wire, metered twice: count once
        row("plug", "hourly", 2, 7.0),  # the meter channel is silent this hour: count it
    ]
    rows.sort()
    p = plan(query.by, query.tz, query.start, query.end)
    # the table as a store answers it: with the totals by the "Names" rules
    hour_1 = rows[3][0]
    shadow = shadow_hourly(p, [("plug", hour_1, 5000, 0)], {"plug": {hour_1}})
    table = EnergyTable.from_flat(p, rows)
    table = table.with_totals(channel_totals(table.columns(), shadow))
    chart = chart_data(Report(query, table, None, None), {"em": "Meter"})
    assert len(chart["labels"]) == 23
    assert chart["labels"][:4] == ["00:00", "01:00", "03:00", "04:00"]
    assert chart["total_import"][:3] == [60.0, 5.0, 7.0]
    assert {s["name"] for s in chart["series"]} == {
        "Meter · em:0/a", "Meter · em:0/b", "plug · switch:0", "plug · hourly"
    }  # fmt: skip


def test_energy_defaults_and_checks() -> None:
    now = datetime(2026, 10, 25, 12, tzinfo=BERLIN).timestamp()
    q = build_query(by="hour", tz="Europe/Berlin", start=None, end=None, now=now)
    hours = (q.end.timestamp() - q.start.timestamp()) / 3600
    assert hours == 25, "the day the clocks go back has 25 hours"
    q = build_query(by="day", tz="Europe/Berlin", start="2026-02", end=None, now=now)
    assert q.start.day == 1 and q.end == datetime(2026, 3, 1, tzinfo=BERLIN)
    q = build_query(
        by="hour", tz="UTC", start="2026-01-01T05:00:00+02:00", end="2026-01-01T06:00Z", now=now
    )
    assert q.end.timestamp() - q.start.timestamp() == 3 * 3600
    q = build_query(by="hour", tz="UTC", start=None, end=None, devices=["a,b", "b"], now=now)
    assert q.devices == ("a", "b")
    with pytest.raises(Problem) as err:
        build_query(by="day", tz="Europe/Berlin", start="2026-03-01", end="2026-02-01", now=now)
    assert err.value.status == 400 and err.value.extra["invalid-params"][0]["name"] == "to"


def test_login_limiter_window() -> None:
    now = [1000.0]
    limiter = LoginLimiter(max_failures=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("ip:1", "user:a") == 0
        limiter.failed("ip:1", "user:a")
    assert limiter.retry_after("ip:2", "user:a") == pytest.approx(60)
    assert limiter.retry_after("ip:2", "user:b") == 0
    now[0] += 61
    assert limiter.retry_after("ip:1", "user:a") == 0
    for i in range(1000):
        limiter.retry_after(f"user:{i}")
    assert not limiter._failures, "quiet keys are forgotten"


def test_power_now_counts_a_three_phase_meter_once() -> None:
    readings = [
        Reading("em", "em:0", 1.0, power_w=600.0),
        Reading("em", "em:0/a", 1.0, power_w=100.0),
        Reading("em", "em:0/b", 1.0, power_w=500.0),
    ]
    assert power_now(readings) == 600.0
    assert power_now(readings[1:]) == 600.0
    assert power_now([Reading("x", "switch:0", 1.0, voltage_v=230.0)]) is None


def test_metrics_escape_labels() -> None:
    text = render(
        readings=[Reading('we"ird\\dev', "switch:0", 1.0, power_w=1.5)],
        devices=[DeviceRecord("d1", last_seen=5.0)],
        online={"d1": True},
        dead_letters={"invalid_json": 3},
        ingest={"received_total": 10},
        live_subscribers=2,
    )
    assert 'kilowatch_power_watts{device="we\\"ird\\\\dev",channel="switch:0"} 1.5' in text
    assert 'kilowatch_dead_letters_total{reason="invalid_json"} 3.0' in text
    assert "kilowatch_ingest_received_total 10.0" in text
    assert text.endswith("\n")


@pytest.mark.parametrize("name", ["Europe", "America", "Etc", "posix", "x" * 300, "Europe/"])
def test_a_zone_folder_is_an_unknown_zone(name: str) -> None:
    """ZoneInfo("Europe") raises IsADirectoryError (an OSError), "x" * 300 a name-too-long one."""
    from kilowatch.errors import ConfigError, InvalidQueryError
    from kilowatch.query.periods import zone
    from kilowatch.web.site import zone as site_zone

    with pytest.raises(InvalidQueryError, match="unknown time zone"):
        zone(name)
    with pytest.raises(ConfigError):
        site_zone(name)


@pytest.mark.parametrize("ts", [1e308, -1e308, float("inf"), float("-inf"), float("nan"), None])
def test_times_no_clock_shows_render_as_unknown(ts: float | None) -> None:
    from kilowatch.web.pages import jinja_filters
    from kilowatch.web.views import instant

    filters = jinja_filters(lambda: 1_773_000_000.0)
    assert instant(ts) is None
    assert filters["when"](ts) == "–"
    assert filters["age"](ts) == "never"


def test_the_first_and_last_instants_render() -> None:
    from kilowatch.web.pages import jinja_filters
    from kilowatch.web.views import FIRST_INSTANT, LAST_INSTANT

    when = jinja_filters(lambda: 0.0)["when"]
    assert when(FIRST_INSTANT) == "0001-01-01 00:00:00 UTC"
    assert when(LAST_INSTANT) == "9999-12-31 23:59:59 UTC"
    # in a site's zone; where the zone's time is out of datetime's years, in UTC
    assert when(FIRST_INSTANT, "America/New_York") == "0001-01-01 00:00:00 UTC"
    assert when(LAST_INSTANT, "Asia/Tokyo") == "9999-12-31 23:59:59 UTC"
    assert when(1_782_864_000.0, "Europe/Berlin") == "2026-07-01 02:00:00 CEST"
    assert when(1_767_225_600.0, "Europe/Berlin") == "2026-01-01 01:00:00 CET"
