"""``kilowatch broker``: per-device MQTT users (add, list, rotate, revoke) and the CA export, on a
SQLite store in tmp_path, with no mosquitto running (reloading a running one is tested in
tests/broker/test_mosquitto.py)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kilowatch.broker.credentials import CREDENTIALS_KEY
from kilowatch.broker.passwords import verify_password
from kilowatch.store import open_store

if TYPE_CHECKING:
    from conftest import Run


def _args(tmp_path: Path) -> list[str]:
    return ["--store", f"sqlite:///{tmp_path}/k.db", "--data-dir", str(tmp_path / "data")]


def _password(output: str) -> str:
    found = re.search(r"password(?: for MQTT user \S+)?: (\S+)", output)
    assert found, output
    return found.group(1)


def _stored(tmp_path: Path) -> dict[str, dict[str, object]]:
    """The credentials as the store keeps them (the commands run their own event loop)."""

    async def read() -> object:
        async with open_store(f"sqlite:///{tmp_path}/k.db") as store:
            return await store.get_meta(CREDENTIALS_KEY)

    data = asyncio.run(read())
    assert isinstance(data, dict)
    return data


def test_add_prints_the_password_once_and_stores_its_hash(kilowatch: Run, tmp_path: Path) -> None:
    out = kilowatch("broker", "user", "add", "shelly-a", "--prefix", "home/a", *_args(tmp_path))
    assert out.returncode == 0, out.stderr
    password = _password(out.stdout)
    assert "created MQTT user shelly-a (shelly, prefix home/a)" in out.stdout
    assert "no managed mosquitto runs for" in out.stdout and "in effect when" in out.stdout
    stored = _stored(tmp_path)
    assert password not in json.dumps(stored)
    assert verify_password(password, str(stored["shelly-a"]["hash"]))

    again = kilowatch("broker", "user", "add", "shelly-a", *_args(tmp_path))
    assert again.returncode == 1
    assert again.stderr == (
        "error: device 'shelly-a' already has credentials; for a new password run: "
        "kilowatch broker user rotate shelly-a\n"
    )


def test_list_never_shows_a_secret(kilowatch: Run, tmp_path: Path) -> None:
    added = kilowatch("broker", "user", "add", "plug-1", "--kind", "tasmota", *_args(tmp_path))
    password = _password(added.stdout)
    table = kilowatch("broker", "user", "list", *_args(tmp_path))
    assert table.returncode == 0 and "plug-1" in table.stdout and "tasmota" in table.stdout
    listed = kilowatch("broker", "user", "list", "--format", "json", *_args(tmp_path))
    [record] = json.loads(listed.stdout)
    assert record["device"] == "plug-1" and record["subscribe"] == ["cmnd/plug-1/#"]
    assert "hash" not in record
    for text in (table.stdout, listed.stdout):
        assert password not in text and "$7$" not in text


def test_rotate_and_revoke(kilowatch: Run, tmp_path: Path) -> None:
    old = _password(kilowatch("broker", "user", "add", "shelly-a", *_args(tmp_path)).stdout)
    rotated = kilowatch("broker", "user", "rotate", "shelly-a", *_args(tmp_path))
    assert rotated.returncode == 0
    new = _password(rotated.stdout)
    record = _stored(tmp_path)["shelly-a"]
    assert verify_password(new, str(record["hash"])) and not verify_password(
        old, str(record["hash"])
    )

    revoked = kilowatch("broker", "user", "revoke", "shelly-a", *_args(tmp_path))
    assert revoked.returncode == 0 and "revoked MQTT user shelly-a" in revoked.stdout
    twice = kilowatch("broker", "user", "revoke", "shelly-a", *_args(tmp_path))
    assert twice.returncode == 0 and "was already revoked" in twice.stdout
    listed = kilowatch("broker", "user", "list", "--format", "json", *_args(tmp_path))
    assert json.loads(listed.stdout)[0]["revoked"] is True
    refused = kilowatch("broker", "user", "rotate", "shelly-a", *_args(tmp_path))
    assert refused.returncode == 1 and "is revoked" in refused.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "bad id"], "device id 'bad id' must be 1-128 letters"),
        (["add", "kilowatch"], "'kilowatch' is kilowatch's own MQTT user"),
        (["add", "x", "--kind", "zigbee"], "--kind 'zigbee' is not one of: shelly, gen1, tasmota"),
        (["add", "x", "--prefix", "a/#"], "--prefix 'a/#' must not contain '#'"),
        (["add", "x", "--kind", "gen1", "--prefix", "a/b"], "is one topic level"),
        (["rotate", "nobody"], "device 'nobody' has no broker credentials"),
        (["revoke", "nobody"], "device 'nobody' has no broker credentials"),
        (["list", "--format", "xml"], "unknown --format 'xml'"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    kilowatch: Run, tmp_path: Path, argv: list[str], message: str
) -> None:
    if argv[0] != "add":
        kilowatch("broker", "user", "add", "someone", *_args(tmp_path))
    out = kilowatch("broker", "user", *argv, *_args(tmp_path))
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert out.stderr.count("\n") == 1


def test_bad_input_creates_no_store(kilowatch: Run, tmp_path: Path) -> None:
    assert kilowatch("broker", "user", "add", "bad id", *_args(tmp_path)).returncode == 1
    assert kilowatch("broker", "user", "list", *_args(tmp_path)).returncode == 1
    assert not (tmp_path / "k.db").exists()


def test_ca_export(kilowatch: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    to_stdout = kilowatch("broker", "ca", "export", "--data-dir", str(data))
    assert to_stdout.returncode == 0
    assert to_stdout.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert (data / "tls" / "ca.key").exists()
    target = tmp_path / "ca.pem"
    to_file = kilowatch("broker", "ca", "export", str(target), "--data-dir", str(data))
    assert to_file.returncode == 0 and to_file.stdout == ""
    assert target.read_text() == to_stdout.stdout  # the same CA: made once
    bad = kilowatch("broker", "ca", "export", str(tmp_path / "no" / "dir" / "ca.pem"),
                    "--data-dir", str(data))  # fmt: skip
    assert bad.returncode == 1 and "cannot write" in bad.stderr
