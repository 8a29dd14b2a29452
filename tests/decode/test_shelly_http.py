"""The decoder of polled HTTP answers (``$http/<device>/Shelly.GetStatus`` and ``/status``).

Payloads: the recorded ones of tests/fixtures (index.json says where each comes from):

- Gen2+: ``shelly/pm_mini_g3/NotifyFullStatus.json``'s ``params``, the composite
  ``Shelly.GetStatus`` of shelly-api.md §13.1 (a NotifyFullStatus carries exactly the GetStatus
  result plus ``ts``); ``shelly/pro_3em/status_em_0.json`` / ``status_emdata_0.json`` assembled
  into a Pro 3EM GetStatus;
- Gen1: ``gen1/plug_s/info.json`` and ``gen1/em3/info.json``, ``/status`` as published on
  ``shellies/<id>/info`` (the same JSON ``GET /status`` answers, §19).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kilowatch.decode.registry import default_registry
from kilowatch.decode.shelly_http import GEN1_STATUS, GEN2_STATUS, topic_for
from kilowatch.decode.state import DecoderState
from kilowatch.errors import DecodeError
from kilowatch.model.messages import DeviceInfo, Reading

FIXTURES = Path(__file__).parents[1] / "fixtures"
RECEIVED = 1752840200.0


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_bytes())


def _gen2_status() -> dict[str, Any]:
    params = dict(_fixture("shelly/pm_mini_g3/NotifyFullStatus.json")["params"])
    del params["ts"]  # GetStatus has no ts: the frame adds it
    return params


def _decode(topic: str, doc: Any) -> list[Any]:
    return default_registry().decode(
        topic, json.dumps(doc).encode(), received_at=RECEIVED, state=DecoderState()
    )


def test_gen2_status_is_read_like_a_full_status_and_stamped_by_the_device():
    pm = "shellypmminig3-ecda3bc4ddb0"
    out = _decode(topic_for(pm, GEN2_STATUS), _gen2_status())
    [reading] = [m for m in out if isinstance(m, Reading)]
    assert reading.device == pm and reading.channel == "pm1:0"
    assert reading.ts == 1720717223.0  # sys.unixtime, not the receipt
    assert not reading.stamped_on_receipt
    assert reading.energy_wh == 1234.567 and reading.returned_energy_wh == 0.0
    assert reading.power_w == 55.0 and reading.voltage_v == 234.7
    [info] = [m for m in out if isinstance(m, DeviceInfo)]
    assert info.mac == "ECDA3BC4DDB0" and info.ip == "192.168.0.108"
    assert info.available_update == "1.4.4"

    # the same status over MQTT decodes to the same reading
    frame = _fixture("shelly/pm_mini_g3/NotifyFullStatus.json")
    frame["params"]["ts"] = 1720717223.0
    mqtt = default_registry().decode(
        f"{pm}/events/rpc",
        json.dumps(frame).encode(),
        received_at=RECEIVED,
        state=DecoderState(),
    )
    assert [m for m in mqtt if isinstance(m, Reading)] == [reading]


@pytest.mark.parametrize("unixtime", [None, 0, "soon"])
def test_gen2_without_a_device_time_is_stamped_on_receipt(unixtime):
    status = _gen2_status()
    status["sys"] = dict(status["sys"], unixtime=unixtime)
    [reading] = [m for m in _decode(topic_for("d1", GEN2_STATUS), status) if m.kind == "reading"]
    assert reading.ts == RECEIVED and reading.stamped_on_receipt


def test_gen2_pro_3em_channels():
    status = {
        "em:0": _fixture("shelly/pro_3em/status_em_0.json"),
        "emdata:0": _fixture("shelly/pro_3em/status_emdata_0.json"),
        "sys": {"unixtime": 1720717300},
    }
    out = _decode(topic_for("shellypro3em-1", GEN2_STATUS), status)
    channels = {m.channel: m for m in out if isinstance(m, Reading)}
    assert set(channels) == {"em:0", "em:0/a", "em:0/b", "em:0/c"}
    assert all(r.ts == 1720717300.0 for r in channels.values())
    assert channels["em:0"].energy_wh == status["emdata:0"]["total_act"]


def test_gen1_plug_status_uses_its_unixtime():
    doc = _fixture("gen1/plug_s/info.json")
    out = _decode(topic_for("shellyplug-s-C18B12", GEN1_STATUS), doc)
    [reading] = [m for m in out if isinstance(m, Reading)]
    assert reading.channel == "relay/0"
    assert reading.ts == 1631266595.0 and not reading.stamped_on_receipt
    assert reading.energy_wh == pytest.approx(1016197 / 60)  # Watt-minutes → Wh
    assert reading.power_w == 52.37
    [info] = [m for m in out if isinstance(m, DeviceInfo)]
    assert info.gen == 1 and info.mac == "3C6105C18B12" and info.ip == "192.168.0.114"


def test_gen1_em3_without_unixtime_is_stamped_on_receipt():
    doc = _fixture("gen1/em3/info.json")
    assert "unixtime" not in doc
    out = _decode(topic_for("shellyem3-68C63AFB5856", GEN1_STATUS), doc)
    readings = {m.channel: m for m in out if isinstance(m, Reading)}
    assert set(readings) == {"emeter/0", "emeter/1"}  # emeter 2 is flagged invalid
    assert readings["emeter/0"].energy_wh == 3105576.4  # emeters[].total is Wh already
    assert all(r.ts == RECEIVED and r.stamped_on_receipt for r in readings.values())


def test_topics_and_errors():
    registry = default_registry()
    assert registry.decoder_for(topic_for("d1", GEN2_STATUS)).name == "shelly-http"
    assert registry.decoder_for(topic_for("d1", GEN1_STATUS)).name == "shelly-http"
    # nothing else is taken, and the decoder adds no MQTT subscription
    assert registry.decoder_for("$http/d1/other") is None
    assert registry.decoder_for("$http//status") is None
    assert not any(s.startswith("$") for s in registry.subscriptions())
    with pytest.raises(DecodeError) as err:
        registry.decode(
            topic_for("d1", GEN2_STATUS), b"[1]", received_at=RECEIVED, state=DecoderState()
        )
    assert err.value.reason == "invalid_payload"
