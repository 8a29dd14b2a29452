"""Script deploy against a simulated device running scripts in V8: create, upload in chunks,
idempotence, replace a running script, limits, errors, per-device values."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kilowatch.errors import FleetError
from kilowatch.fleet.rpc.base import SCRIPT_CHUNK, ShellyRpc
from kilowatch.fleet.scriptdeploy import (
    SCRIPT_LIMIT_BYTES,
    ScriptSpec,
    deploy_script,
    render,
    script_changes,
    script_state,
)
from shellysim import Fleet

from .simrpc import Recording, lan_rpc

HELLO = 'let greeting = "hello";\nprint(greeting);\n'


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet(devices=1, models=["pm1"], speed=1, tick_s=0.05) as f:
        yield f


@pytest.fixture
async def device(fleet: Fleet) -> AsyncIterator[tuple[ShellyRpc, Recording]]:
    async with lan_rpc(fleet, fleet.devices[0]) as pair:
        yield pair


def filler(chars: int) -> str:
    """Valid JavaScript of exactly ``chars`` ASCII characters: one string and a comment pad."""
    head = "let x = 1;\n// "
    return head + "p" * (chars - len(head) - 1) + "\n"


async def test_deploy_fresh_then_unchanged(
    fleet: Fleet, device: tuple[ShellyRpc, Recording]
) -> None:
    rpc, transport = device
    spec = ScriptSpec("kilowatch", HELLO, version="1")
    assert await script_state(rpc, "kilowatch") is None
    first = await deploy_script(rpc, spec)
    assert first.created and first.uploaded and first.started and first.enable_set
    assert not first.unchanged and first.chunks == 1 and first.bytes == len(HELLO)
    assert first.changes == ("script 'kilowatch' missing",)
    slot = fleet.devices[0].scripts.slots[first.script_id]
    assert slot.code == HELLO and slot.enable and slot.running
    state = await script_state(rpc, "kilowatch")
    assert state is not None and state.sha256 == spec.sha256 and state.running
    assert state.enable and state.errors == () and state.size == len(HELLO)
    assert script_changes(state, spec) == []

    sent_before = len(transport.sent)
    puts = transport.count("Script.PutCode")
    second = await deploy_script(rpc, spec)
    assert second.unchanged and not (second.uploaded or second.started or second.stopped)
    assert transport.count("Script.PutCode") == puts == 1
    # The second deploy only reads: List, GetCode, GetStatus.
    assert transport.sent[sent_before:] == ["Script.List", "Script.GetCode", "Script.GetStatus"]
    assert second.calls == 3


async def test_changed_code_stops_uploads_starts(
    fleet: Fleet, device: tuple[ShellyRpc, Recording]
) -> None:
    rpc, transport = device
    await deploy_script(rpc, ScriptSpec("kilowatch", HELLO))
    new = ScriptSpec("kilowatch", HELLO + "let more = 2;\n")
    state = await script_state(rpc, "kilowatch")
    assert [c.split(" (")[0] for c in script_changes(state, new)] == [
        "script 'kilowatch' code differs"
    ]
    start = len(transport.sent)
    result = await deploy_script(rpc, new)
    assert result.stopped and result.uploaded and result.started and not result.created
    sent = transport.sent[start:]
    # The firmware refuses PutCode on a running script (-109): Stop comes first.
    assert sent.index("Script.Stop") < sent.index("Script.PutCode") < sent.index("Script.Start")
    assert "Script.Create" not in sent and "Script.SetConfig" not in sent
    slot = fleet.devices[0].scripts.slots[result.script_id]
    assert slot.code == new.code and slot.running


async def test_chunks_of_a_5000_character_script(
    fleet: Fleet, device: tuple[ShellyRpc, Recording]
) -> None:
    rpc, transport = device
    code = filler(5000)
    result = await deploy_script(rpc, ScriptSpec("big", code, enable=False))
    assert result.chunks == 5 == transport.count("Script.PutCode")
    assert fleet.devices[0].scripts.slots[result.script_id].code == code
    assert not fleet.devices[0].scripts.slots[result.script_id].enable
    state = await script_state(rpc, "big")
    assert state is not None and state.size == 5000 and state.running and not state.enable
    assert SCRIPT_CHUNK == 1024


async def test_multibyte_code_reads_back_across_pages(
    fleet: Fleet, device: tuple[ShellyRpc, Recording]
) -> None:
    # GetCode pages hold 2048 bytes; a 3-byte character straddles the first page's end.
    code = "let s = '" + "€" * 1500 + "';\n"
    rpc, _ = device
    result = await deploy_script(rpc, ScriptSpec("euro", code))
    assert result.bytes == len(code.encode()) > 4096
    state = await script_state(rpc, "euro")
    assert state is not None and state.sha256 == result.sha256


async def test_over_limit_refused_before_any_call(
    device: tuple[ShellyRpc, Recording],
) -> None:
    rpc, transport = device
    code = filler(SCRIPT_LIMIT_BYTES + 1)
    with pytest.raises(FleetError, match=r"15001 bytes .* limit of 15000 bytes"):
        await deploy_script(rpc, ScriptSpec("huge", code))
    assert transport.sent == []
    # Exactly at the limit is fine; counted in UTF-8 bytes, not characters.
    ok = await deploy_script(rpc, ScriptSpec("full", filler(SCRIPT_LIMIT_BYTES)))
    assert ok.bytes == SCRIPT_LIMIT_BYTES
    with pytest.raises(FleetError, match="15002 bytes"):
        await deploy_script(rpc, ScriptSpec("wide", "//" + "é" * 7500))


async def test_device_limit_below_ours_is_a_fleet_error(
    device: tuple[ShellyRpc, Recording],
) -> None:
    rpc, _ = device
    with pytest.raises(FleetError, match=r"does not fit on this device.*-108"):
        await deploy_script(rpc, ScriptSpec("huge", filler(15_500)), limit=20_000)


async def test_syntax_error_reports_device_errors(
    fleet: Fleet, device: tuple[ShellyRpc, Recording]
) -> None:
    rpc, _ = device
    with pytest.raises(FleetError, match="reports errors after start: syntax_error"):
        await deploy_script(rpc, ScriptSpec("broken", "let x = ;\n"))
    state = await script_state(rpc, "broken")
    assert state is not None and state.errors == ("syntax_error",) and not state.running
    assert "script 'broken' reports errors: syntax_error" in script_changes(
        state, ScriptSpec("broken", "let x = ;\n")
    )
    # The fix replaces the code in the same slot and runs.
    fixed = await deploy_script(rpc, ScriptSpec("broken", "let x = 1;\n"))
    assert fixed.script_id == state.id and fixed.uploaded and not fixed.created
    assert fleet.devices[0].scripts.slots[state.id].running


async def test_crashed_script_with_same_code_is_restarted(
    fleet: Fleet, device: tuple[ShellyRpc, Recording]
) -> None:
    rpc, transport = device
    spec = ScriptSpec("crashy", HELLO)
    await deploy_script(rpc, spec)
    slot = fleet.devices[0].scripts.slots[1]
    await rpc.script_stop(1)
    slot.errors = ["crashed"]  # the status a device shows after an uncaught throw
    state = await script_state(rpc, "crashy")
    assert state is not None and state.errors == ("crashed",) and not state.running
    puts = transport.count("Script.PutCode")
    result = await deploy_script(rpc, spec)
    assert result.started and not result.uploaded and transport.count("Script.PutCode") == puts
    assert slot.running and slot.errors == []


async def test_no_free_slot(fleet: Fleet, device: tuple[ShellyRpc, Recording]) -> None:
    rpc, _ = device
    for n in range(10):
        await rpc.script_create(f"other{n}")
    with pytest.raises(FleetError, match=r"no free script slot for 'kilowatch'.*10 scripts"):
        await deploy_script(rpc, ScriptSpec("kilowatch", HELLO))
    # An existing slot by that name is reused, even on a full device.
    await rpc.script_set_config(10, {"name": "kilowatch"})
    result = await deploy_script(rpc, ScriptSpec("kilowatch", HELLO))
    assert result.script_id == 10 and not result.created


async def test_enable_flag_alone(fleet: Fleet, device: tuple[ShellyRpc, Recording]) -> None:
    rpc, transport = device
    await deploy_script(rpc, ScriptSpec("kilowatch", HELLO, enable=True))
    off = ScriptSpec("kilowatch", HELLO, enable=False)
    state = await script_state(rpc, "kilowatch")
    assert script_changes(state, off) == ["script 'kilowatch' enabled on boot, wanted off"]
    start = len(transport.sent)
    result = await deploy_script(rpc, off)
    assert result.enable_set and not (result.uploaded or result.stopped or result.started)
    assert "Script.SetConfig" in transport.sent[start:]
    assert not fleet.devices[0].scripts.slots[result.script_id].enable


async def test_per_device_placeholders(fleet: Fleet, device: tuple[ShellyRpc, Recording]) -> None:
    dev = fleet.devices[0]
    template = (
        'let ID = "{{ device.id }}"; let MAC = "{{device.mac}}";\n'
        'let NAME = "{{ device.name }}"; let SITE = "{{ vars.site }}"; let N = {{ vars.n }};\n'
    )
    values = {
        "device": {"id": dev.id, "mac": dev.mac, "name": 'Meter "box"\n2'},
        "vars": {"site": "home", "n": 3},
    }
    code = render(template, values)
    assert f'let ID = "{dev.id}"; let MAC = "{dev.mac}";' in code
    assert 'let NAME = "Meter \\"box\\"\\n2"; let SITE = "home"; let N = 3;' in code
    rpc, _ = device
    await deploy_script(rpc, ScriptSpec("kilowatch", code))
    # The device runs it and the values arrive intact (the name with its quote and newline).
    assert (await rpc.call("Script.Eval", {"id": 1, "code": "NAME"}))["result"] == 'Meter "box"\n2'
    assert (await rpc.call("Script.Eval", {"id": 1, "code": "ID + N"}))["result"] == dev.id + "3"


def test_unknown_placeholders_are_named() -> None:
    values = {"device": {"id": "shellyx", "mac": "AA", "name": None}, "vars": {"site": "home"}}
    with pytest.raises(FleetError) as info:
        render("a {{ vars.room }} b {{ device.ip }} {{ vars.room }}", values, subject="hourly.js")
    text = str(info.value)
    assert text.startswith("hourly.js: unknown placeholder {{ vars.room }}, {{ device.ip }};")
    assert "known: device.id, device.mac, device.name, vars.site" in text
    assert render("x = '{{ device.name }}'; {a: {b: 1}}", values) == "x = ''; {a: {b: 1}}"
    # Nothing in a template runs: an expression is just an unknown placeholder.
    with pytest.raises(FleetError, match="unknown placeholder"):
        render("{{ __import__ }}", values)


def test_the_device_room_is_a_placeholder() -> None:
    values = {"device": {"id": "shellyx", "mac": "AA", "name": "boiler", "room": "cellar"}}
    assert render('let ROOM = "{{ device.room }}";', values) == 'let ROOM = "cellar";'
