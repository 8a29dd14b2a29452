"""No secret reaches a log, even with aioshelly's frame logging at DEBUG."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

import pytest

from kilowatch.fleet.rpc import connect_lan, lan_session
from kilowatch.fleet.rpc.redact import REDACTED, redact
from shellysim import Fleet

PASSWORD = "correct horse battery staple"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"


def test_redact_replaces_secrets_and_copies() -> None:
    frame = {"method": "MQTT.SetConfig", "params": {"config": {"user": "u", "pass": PASSWORD}},
             "auth": {"response": "ab"}}  # fmt: skip
    out = redact(("send(%s): %s", frame))
    assert PASSWORD not in repr(out) and "'response'" not in repr(out)
    assert out[1]["params"]["config"] == {"user": "u", "pass": REDACTED}
    assert frame["params"]["config"]["pass"] == PASSWORD  # the frame sent is untouched
    assert redact({"data": KEY, "append": False}) == {"data": REDACTED, "append": False}
    assert redact({"pass": None}) == {"pass": None}  # clearing a password is no secret


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet(devices=1, engine=None) as fl:
        yield fl


async def test_passwords_and_keys_never_reach_the_log_at_debug(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dev = fleet.devices[0]
    async with lan_session() as session:
        rpc = await connect_lan(fleet.address(dev), session=session, device_id=dev.id)
        async with rpc:
            await rpc.mqtt_set_config({"user": "meter", "pass": PASSWORD})
            await rpc.put_pem("Shelly.PutTLSClientKey", KEY, append=False)
            ha1 = hashlib.sha256(f"admin:{dev.id}:{PASSWORD}".encode()).hexdigest()
            await rpc.set_auth(dev.id, ha1)
    assert "send(" in caplog.text or "result(" in caplog.text  # aioshelly did log the frames
    assert PASSWORD not in caplog.text
    assert ha1 not in caplog.text
    assert "PRIVATE KEY" not in caplog.text
