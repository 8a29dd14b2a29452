"""Profile compliance: what a plan and an apply leave per device, kept in one meta value that
other devices' lines survive and that a repeated record leaves as it was."""

from __future__ import annotations

from pathlib import Path

from kilowatch.fleet.apply import ApplyReport, DeviceResult, Status
from kilowatch.fleet.compliance import (
    COMPLIANCE_KEY,
    MAX_CHANGES,
    Compliance,
    State,
    compliance,
    from_plans,
    from_report,
    record,
)
from kilowatch.fleet.plan import Change, DevicePlan, ErrorInfo, Step
from kilowatch.store import open_store

NOW = 1_773_574_200.0
TZ = Change(Step.SYSTEM, "sys.location.tz", "Europe/Berlin", "Europe/Vienna")
FW = Change(Step.FIRMWARE, "firmware", "1.4.4", ">= 1.5.0", advisory=True)
DOWN = ErrorInfo("DeviceConnectionError", "cannot connect to 127.0.0.1:1: refused")


def test_a_plan_says_in_sync_drifted_or_unreadable() -> None:
    plans = [
        DevicePlan("a"),
        DevicePlan("b", changes=(TZ, FW)),
        DevicePlan("c", changes=(FW,)),  # advisory only: apply changes nothing, so in sync
        DevicePlan("d", error=DOWN),
    ]
    got = {c.device: c for c in from_plans("home.toml", plans, NOW)}
    assert {d: c.state for d, c in got.items()} == {
        "a": State.IN_SYNC, "b": State.DRIFTED, "c": State.IN_SYNC, "d": State.UNREADABLE,
    }  # fmt: skip
    assert got["b"].changes == ("sys.location.tz: Europe/Berlin → Europe/Vienna",)
    assert got["d"].error == DOWN.message and got["d"].changes == ()
    assert all(c.profile == "home.toml" and c.checked == NOW for c in got.values())

    many = [Change(Step.SYSTEM, f"sys.f{i}", "x" * 300, i) for i in range(30)]
    (long,) = from_plans("home.toml", [DevicePlan("e", changes=tuple(many))], NOW)
    assert len(long.changes) == MAX_CHANGES and all(len(c) <= 160 for c in long.changes)


def test_an_apply_leaves_ok_and_unchanged_in_sync() -> None:
    report = ApplyReport(
        profile="/etc/kilowatch/home.toml",
        dry_run=False,
        seconds=1.0,
        devices=(
            DeviceResult("a", Status.OK, changes=(TZ,)),
            DeviceResult("b", Status.UNCHANGED),
            DeviceResult("c", Status.FAILED, changes=(TZ,), error=DOWN),
            DeviceResult("d", Status.FAILED, error=DOWN),
            DeviceResult("e", Status.PLANNED, changes=(TZ,)),
        ),
    )
    got = {c.device: c for c in from_report("home.toml", report, NOW)}
    assert {d: c.state for d, c in got.items()} == {
        "a": State.IN_SYNC, "b": State.IN_SYNC, "c": State.DRIFTED, "d": State.UNREADABLE,
        "e": State.DRIFTED,
    }  # fmt: skip
    assert got["c"].error == DOWN.message and got["c"].changes == (str(TZ),)


async def test_records_merge_by_device_and_repeat_safely(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path}/k.db") as store:
        assert await compliance(store) == {}
        first = from_plans("home.toml", [DevicePlan("a", changes=(TZ,)), DevicePlan("b")], NOW)
        await record(store, first)
        await record(store, first)  # a retry after an unknown outcome: the same value
        stored = await store.get_meta(COMPLIANCE_KEY)
        assert isinstance(stored, dict) and set(stored) == {"a", "b"}
        await record(store, from_plans("office.toml", [DevicePlan("a")], NOW + 60))
        await record(store, [])  # nothing to keep: no write
        got = await compliance(store)
        assert got["a"] == Compliance("a", "office.toml", State.IN_SYNC, NOW + 60)
        assert got["b"].profile == "home.toml" and got["b"].state is State.IN_SYNC
        assert got["a"].to_json() == {
            "profile": "office.toml", "state": "in-sync", "changes": [], "error": None,
            "checked": NOW + 60,
        }  # fmt: skip

        # a line that does not parse (written by hand, by a future version) is left out
        await store.put_meta(COMPLIANCE_KEY, {**stored, "x": {"state": "sideways"}, "y": 3})
        assert set(await compliance(store)) == {"a", "b"}
        await store.put_meta(COMPLIANCE_KEY, ["not", "a", "mapping"])
        assert await compliance(store) == {}
