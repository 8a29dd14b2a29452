"""``kilowatch alerts``: set (checked, audited, secrets kept), rules, the current states, the
history, and a test notification to a real local webhook receiver."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.alerts.receivers import WebhookReceiver

from kilowatch.alerts.config import AlertsConfig, load_config, new_webhook_secret
from kilowatch.alerts.state import (
    AlertBook,
    AlertRecord,
    AlertState,
    DeliveryResult,
    append_history,
    save_book,
)
from kilowatch.store import open_store
from kilowatch.store.protocol import AuditEntry

Run = Callable[..., subprocess.CompletedProcess[str]]

TOML = """
[[rules]]
id = "fridge-offline"
kind = "offline"
devices = ["shellyplusplugs-*"]
for_s = 600
notify = ["hook"]

[[rules]]
id = "oven"
kind = "power_above"
channel = "switch:0"
threshold_w = 2500
for_s = 300
repeat_s = 3600
notify = ["hook"]

[[channels]]
name = "hook"
kind = "webhook"
url = "{url}"
secret = "{secret}"
"""


def write(path: Path, url: str, secret: str) -> Path:
    path.write_text(TOML.format(url=url, secret=secret))
    return path


async def _stored(url: str) -> tuple[AlertsConfig, list[AuditEntry]]:
    async with open_store(url) as store:
        return await load_config(store), await store.audit(action="alerts.rules")


def test_set_rules_and_secrets_kept(tmp_path: Path, kilowatch: Run) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    secret = new_webhook_secret()
    result = kilowatch(
        "alerts", "set", str(write(tmp_path / "a.toml", "http://127.0.91.1:9/x", secret)),
        "--store", url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 rules, 1 channels" in result.stdout
    shown = kilowatch("alerts", "rules", "--store", url)
    assert "fridge-offline" in shown.stdout and "switch:0 > 2500 W for 300 s" in shown.stdout
    exported = kilowatch("alerts", "rules", "--json", "--store", url).stdout
    assert secret not in exported and '"secret": "***"' in exported
    # the redacted export, edited and set again, keeps the stored secret
    data = json.loads(exported)
    data["rules"][1]["threshold_w"] = 3000
    (tmp_path / "b.json").write_text(json.dumps(data))
    assert kilowatch("alerts", "set", str(tmp_path / "b.json"), "--store", url).returncode == 0
    cfg, entries = asyncio.run(_stored(url))
    assert cfg.rules[1].threshold_w == 3000 and cfg.channels[0].secret == secret
    assert [e.result for e in entries] == ["ok", "started", "ok", "started"]
    assert entries[0].actor.startswith("cli:") and entries[0].detail["rules"] == 2


def test_an_invalid_file_changes_nothing(tmp_path: Path, kilowatch: Run) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nid = "x"\nkind = "offline"\nnotify = ["nope"]\n')
    result = kilowatch("alerts", "set", str(bad), "--store", url)
    assert result.returncode == 1
    assert "rule 'x': notify names unknown channel 'nope'" in result.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert "is not valid JSON" in kilowatch("alerts", "set", str(broken), "--store", url).stderr
    assert "give a .toml or a .json" in kilowatch("alerts", "set", "x.yaml", "--store", url).stderr
    assert asyncio.run(_stored(url)) == (AlertsConfig(), [])


async def _firing(url: str) -> None:
    async with open_store(url) as store:
        book = AlertBook()
        state = AlertState("oven", "plug-1", "firing", 1_760_000_000, 2600.0, None, "draws 2600 W")
        book.states[state.key] = state
        await save_book(store, book)
        await append_history(
            store,
            [
                AlertRecord(
                    "n1", 1_760_000_000, "oven", "plug-1", "firing", "draws 2600 W", 2600.0,
                    (DeliveryResult("hook", True, 2), DeliveryResult("mail", False, 5, "refused")),
                )
            ],
        )  # fmt: skip


def test_current_and_history(tmp_path: Path, kilowatch: Run) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    asyncio.run(_firing(url))
    now = kilowatch("alerts", "--store", url)
    assert now.returncode == 0 and "firing" in now.stdout and "draws 2600 W" in now.stdout
    assert json.loads(kilowatch("alerts", "--json", "--store", url).stdout)[0]["value"] == 2600
    past = kilowatch("alerts", "history", "--store", url)
    assert "hook: ok after 2, mail: failed after 5 (refused)" in past.stdout
    line = kilowatch("alerts", "history", "--json", "--store", url).stdout.splitlines()[0]
    assert json.loads(line)["deliveries"][1]["error"] == "refused"
    missing = kilowatch("alerts", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 1 and "no store at" in missing.stderr


async def test_test_sends_through_the_channel(tmp_path: Path, kilowatch: Run) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    secret = new_webhook_secret()
    async with WebhookReceiver(secret) as rx:
        path = write(tmp_path / "a.toml", rx.url, secret)
        # typer's runner calls asyncio.run: in a thread, beside this test's loop
        done = await asyncio.to_thread(kilowatch, "alerts", "set", str(path), "--store", url)
        assert done.returncode == 0
        ok = await asyncio.to_thread(kilowatch, "alerts", "test", "hook", "--store", url)
        assert ok.returncode == 0 and "delivered through hook" in ok.stdout
        assert rx.accepted[0].json()["type"] == "alert.test" and rx.accepted[0].verified
        unknown = await asyncio.to_thread(kilowatch, "alerts", "test", "nope", "--store", url)
        assert (
            unknown.returncode == 1 and "no alert channel 'nope' (channels: hook)" in unknown.stderr
        )
    gone = await asyncio.to_thread(kilowatch, "alerts", "test", "hook", "--store", url)
    assert (
        gone.returncode == 1
        and "NOT delivered" in gone.stderr
        and "after 2 attempts" in gone.stderr
    )
