"""The simulator and kilowatch's decoders agree: every frame a device emits decodes, and the
energy counters kilowatch reads are the simulator's counters (units included)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from kilowatch.decode.registry import default_registry
from kilowatch.decode.state import DecoderState
from kilowatch.model.messages import Reading
from shellysim import MODELS, Device, ManualClock, Truth, mac_for

T0 = 1_752_840_000.0


@pytest.mark.parametrize("model", sorted(MODELS))
async def test_every_emitted_frame_decodes_to_the_counters(model: str) -> None:
    clock = ManualClock(T0)
    truth = Truth()
    dev = Device(MODELS[model], mac=mac_for(5, 9), clock=clock, truth=truth, seed=5)
    frames: list[bytes] = []
    prefix = dev.id
    dev.add_sink(
        lambda m, p: frames.append(
            orjson.dumps({"src": dev.id, "dst": f"{prefix}/events", "method": m, "params": p})
        )
    )
    async with dev:
        frames.append(
            orjson.dumps({"src": dev.id, "dst": f"{prefix}/events", "method": "NotifyFullStatus",
                          "params": {"ts": clock.now(), **dev.status()}})
        )  # fmt: skip
        for _ in range(12 * 60):
            clock.advance(60)
            dev.tick()
        dev.boot_time_s = 0.0
        await dev.call("Shelly.Update", {"stage": "stable"})  # NotifyEvents too
        async with asyncio.timeout(5):
            while dev.ver == MODELS[model].ver or not dev.online:
                await asyncio.sleep(0.01)
    registry = default_registry()
    state = DecoderState()
    last: dict[str, Reading] = {}
    for frame in frames:
        for msg in registry.decode(f"{prefix}/events/rpc", frame, received_at=T0, state=state):
            assert msg.device == dev.id
            if isinstance(msg, Reading) and msg.energy_wh is not None:
                last[msg.channel] = msg
    channels = set(truth.as_dict()[dev.id])
    assert channels <= set(last)  # every channel of the truth is read by kilowatch
    for channel in channels:
        imp, ret = truth.total(dev.id, channel, T0, T0 + 86400)
        assert last[channel].energy_wh == pytest.approx(imp, abs=0.01), channel
        assert (last[channel].returned_energy_wh or 0.0) == pytest.approx(ret, abs=0.01), channel
        assert last[channel].ts == pytest.approx(T0 + 12 * 3600, abs=1.0)


@pytest.mark.parametrize(("vendor", "channel"), [("gen1", "relay/0"), ("tasmota", "ENERGY")])
def test_vendor_publishers_decode_to_their_counters(vendor: str, channel: str) -> None:
    from shellysim.vendors import make_publishers

    clock = ManualClock(T0)
    truth = Truth()
    (pub,) = make_publishers(
        [vendor], clock=clock, truth=truth, seed=2, broker="mqtt://127.0.0.1:1"
    )
    clock.advance(6 * 3600)
    pub.tick()
    registry = default_registry()
    readings = [
        m
        for topic, payload in pub.messages()
        for m in registry.decode(
            topic, payload.encode(), received_at=clock.now(), state=DecoderState()
        )
        if isinstance(m, Reading) and m.energy_wh is not None
    ]
    assert readings and {r.device for r in readings} == {pub.id}
    assert {r.channel for r in readings} == {channel}
    imp, _ = truth.total(pub.id, channel, T0, T0 + 86400)
    # Gen1 counts whole Watt-minutes, Tasmota whole Wh (kWh with 3 decimals)
    assert readings[-1].energy_wh == pytest.approx(imp, abs=1.0)
    assert imp > 100
