"""kilowatch.alerts.config: strict parsing, redacted JSON that keeps stored secrets, the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kilowatch.alerts.config import (
    REDACTED,
    AlertsConfig,
    config_to_json,
    load_config,
    new_webhook_secret,
    parse_config,
    save_config,
)
from kilowatch.alerts.state import AlertBook, AlertState, current, history, save_book
from kilowatch.errors import ConfigError
from kilowatch.store import open_store

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes


def sample() -> dict[str, Any]:
    return {
        "rules": [
            {"id": "off", "kind": "offline", "devices": ["shelly*"], "notify": ["hook", "mail"]},
            {"id": "oven", "kind": "power_above", "threshold_w": 2000, "for_s": 120,
             "channel": "switch:0", "repeat_s": 3600, "notify": ["push"], "name": "Oven on"},
            {"id": "day", "kind": "daily_energy_above", "budget_wh": 10000},
            {"id": "ota", "kind": "firmware_failed", "enabled": False},
        ],
        "channels": [
            {"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/x", "secret": SECRET},
            {"name": "mail", "kind": "email", "smtp_host": "127.0.0.1", "smtp_port": 2525,
             "smtp_security": "none", "sender": "kw@example.org", "recipients": ["me@example.org"],
             "username": "kw", "password": "pw"},
            {"name": "push", "kind": "ntfy", "url": "https://ntfy.example/topic", "token": "tk"},
        ],
    }  # fmt: skip


def test_parse_and_round_trip() -> None:
    cfg = parse_config(sample())
    assert [r.id for r in cfg.rules] == ["off", "oven", "day", "ota"]
    assert cfg.rules[0].for_s == 300  # offline's default grace
    assert cfg.rules[1].threshold_w == 2000.0 and cfg.rules[1].channel == "switch:0"
    assert cfg.channel("mail") is not None and cfg.channel("mail").smtp_port == 2525  # type: ignore[union-attr]
    assert parse_config(config_to_json(cfg, secrets=True)) == cfg


def test_redacted_json_keeps_stored_secrets() -> None:
    cfg = parse_config(sample())
    shown = config_to_json(cfg)
    assert shown["channels"][0]["secret"] == REDACTED
    assert shown["channels"][1]["password"] == REDACTED
    assert SECRET not in str(shown) and "'pw'" not in str(shown)
    assert parse_config(shown, previous=cfg) == cfg
    with pytest.raises(ConfigError, match="channel 'hook': secret is '\\*\\*\\*' but no secret"):
        parse_config(shown)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["rules"][0].update(colour="red"), "rule 'off': colour is not a known key"),
        (lambda d: d["rules"][1].update(threshold_w=-1), "rule 'oven': threshold_w must be"),
        (lambda d: d["rules"][1].update(for_s="2m"), "rule 'oven': for_s must be a whole"),
        (lambda d: d["rules"][1].pop("threshold_w"), "rule 'oven': threshold_w is required"),
        (lambda d: d["rules"][0].update(threshold_w=5), "threshold_w does not apply"),
        (lambda d: d["rules"][0].update(notify=["nope"]), "unknown channel 'nope'"),
        (lambda d: d["rules"].append({"id": "off", "kind": "offline"}), "used by two rules"),
        (lambda d: d["rules"][0].update(id="Bad Id"), "must be a slug"),
        (lambda d: d["rules"][0].update(kind="smoke"), "kind must be one of"),
        (lambda d: d["channels"][0].update(url="ftp://x/"), "channel 'hook': url 'ftp://x/'"),
        (lambda d: d["channels"][0].update(secret="whsec_abc"), "channel 'hook': secret is inv"),
        (lambda d: d["channels"][0].update(token="x"), "token does not apply to a webhook"),
        (lambda d: d["channels"][1].update(recipients=[]), "recipients must name at least"),
        (lambda d: d["channels"][1].update(smtp_port=70000), "smtp_port must be between"),
        (lambda d: d["channels"].append(dict(d["channels"][2])), "used by two channels"),
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
    ],
)
def test_invalid_config_names_rule_or_channel_and_key(edit: Any, message: str) -> None:
    data = sample()
    edit(data)
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_new_webhook_secret_parses() -> None:
    data = sample()
    data["channels"][0]["secret"] = new_webhook_secret()
    parse_config(data)


async def test_store_round_trip(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'k.db'}") as store:
        assert await load_config(store) == AlertsConfig()
        cfg = parse_config(sample())
        await save_config(store, cfg)
        await save_config(store, cfg)  # a value write: repeating it changes nothing
        assert await load_config(store) == cfg
        assert await current(store) == [] and await history(store) == []
        book = AlertBook()
        state = AlertState("off", "d1", "firing", 10.0, 30.0, 10.0, "d1 offline")
        book.states[state.key] = state
        await save_book(store, book)
        assert await current(store) == [state]
