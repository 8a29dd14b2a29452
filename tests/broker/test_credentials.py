"""Per-device credentials: mosquitto's $7$ hashes, the topics each kind may use, the rendered
password and ACL files, and the records in the store's meta (never a password)."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kilowatch.broker.credentials import (
    CREDENTIALS_KEY,
    SERVICE_USER,
    Credential,
    DeviceKind,
    add_device,
    check_device_id,
    check_prefix,
    credentials,
    new_credential,
    parse_kind,
    render_acl_file,
    render_password_file,
    revoke,
    revoke_device,
    rotate,
    rotate_device,
    topics_for,
    write_private,
)
from kilowatch.broker.passwords import mosquitto_hash, verify_password
from kilowatch.errors import ConfigError
from kilowatch.store import open_store

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
NOW = 1_800_000_000.0


def test_a_hash_has_mosquittos_layout_and_verifies() -> None:
    hashed = mosquitto_hash("s3cret-pass")
    _, seven, iterations, salt, key = hashed.split("$")
    assert (seven, iterations) == ("7", "1000")
    assert len(base64.b64decode(salt)) == 12 and len(base64.b64decode(key)) == 64
    assert verify_password("s3cret-pass", hashed)
    assert not verify_password("s3cret-pasS", hashed)
    assert not verify_password("s3cret-pass", "$6$abc$def")
    assert mosquitto_hash("same") != mosquitto_hash("same")  # a new salt each time


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed")
def test_our_hash_is_byte_for_byte_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """mosquitto_passwd (Debian ships it with mosquitto) and we derive the same key from the same
    salt and iterations; mosquitto itself accepting our hashes is in test_mosquitto.py."""
    assert MOSQUITTO_PASSWD is not None
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), "meter", "pa55:word"], check=True)
    user, theirs = passwd.read_text().strip().split(":", 1)
    _, _, iterations, salt, _ = theirs.split("$")
    ours = mosquitto_hash("pa55:word", salt=base64.b64decode(salt), iterations=int(iterations))
    assert (user, ours) == ("meter", theirs)
    assert verify_password("pa55:word", theirs)


def test_each_kind_gets_its_own_topics() -> None:
    dev = "shellypmminig3-ecda3bc4ddb0"
    assert topics_for(DeviceKind.SHELLY, dev, "home/boiler") == (
        ("home/boiler/#", f"/system/{dev}/status"),
        ("home/boiler/rpc", "home/boiler/command/#"),
    )
    assert topics_for(DeviceKind.GEN1, "shellyplug-s-C18B12", "shellyplug-s-C18B12") == (
        ("shellies/shellyplug-s-C18B12/#", "shellies/announce"),
        ("shellies/shellyplug-s-C18B12/#", "shellies/command"),
    )
    assert topics_for(DeviceKind.TASMOTA, "t1", "tasmota_5A3B2C") == (
        ("tele/tasmota_5A3B2C/#", "stat/tasmota_5A3B2C/#"),
        ("cmnd/tasmota_5A3B2C/#",),
    )


def test_a_new_credential_keeps_a_hash_of_the_password_it_returns() -> None:
    record, password = new_credential("shelly-1", kind=DeviceKind.SHELLY, prefix=None, now=NOW)
    assert record.user == record.prefix == "shelly-1"
    assert verify_password(password, record.password_hash)
    assert password not in json.dumps(record.to_json())
    assert "hash" not in record.public_json()
    assert Credential.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_rotate_and_revoke() -> None:
    record, old = new_credential("shelly-1", kind=DeviceKind.SHELLY, prefix=None, now=NOW)
    rotated, new = rotate(record, now=NOW + 10)
    assert rotated.rotated == NOW + 10 and rotated.created == NOW
    assert verify_password(new, rotated.password_hash)
    assert not verify_password(old, rotated.password_hash)
    revoked = revoke(rotated, now=NOW + 20)
    assert (revoked.revoked, revoked.revoked_at) == (True, NOW + 20)
    assert revoke(revoked, now=NOW + 30) == revoked


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        ("", "must be 1-128"),
        ("has space", "must be 1-128"),
        ("a:b", "must be 1-128"),
        ("a/b", "must be 1-128"),
        ("-lead", "must be 1-128"),
        ("x" * 129, "must be 1-128"),
        (SERVICE_USER, "kilowatch's own MQTT user"),
    ],
)
def test_bad_device_ids_are_refused(device: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        check_device_id(device)


@pytest.mark.parametrize(
    ("prefix", "kind", "fragment"),
    [
        ("", DeviceKind.SHELLY, "1-300"),
        ("$SYS", DeviceKind.SHELLY, r"must not start with \$"),
        ("home/#", DeviceKind.SHELLY, "must not contain '#'"),
        ("a+b", DeviceKind.SHELLY, r"'\+'"),
        ("a b", DeviceKind.SHELLY, "' '"),
        ("home/plug", DeviceKind.TASMOTA, "one topic level"),
        ("x" * 301, DeviceKind.SHELLY, "1-300"),
    ],
)
def test_bad_prefixes_are_refused(prefix: str, kind: DeviceKind, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        check_prefix(prefix, kind)


def test_unknown_kind() -> None:
    assert parse_kind("gen1") is DeviceKind.GEN1
    with pytest.raises(ConfigError, match="not one of: shelly, gen1, tasmota"):
        parse_kind("zigbee")


def _records() -> list[Credential]:
    a, _ = new_credential("shelly-a", kind=DeviceKind.SHELLY, prefix="home/a", now=NOW)
    b, _ = new_credential("plug-b", kind=DeviceKind.GEN1, prefix=None, now=NOW)
    gone, _ = new_credential("gone", kind=DeviceKind.TASMOTA, prefix=None, now=NOW)
    return [a, b, revoke(gone, now=NOW)]


def test_the_password_file_has_active_users_and_kilowatch() -> None:
    records = _records()
    a, b, _ = records
    text = render_password_file(records, "$7$1000$c2FsdA==$a2V5")
    assert text.splitlines() == [
        f"{SERVICE_USER}:$7$1000$c2FsdA==$a2V5",
        f"plug-b:{b.password_hash}",
        f"shelly-a:{a.password_hash}",
    ]
    assert render_password_file([]) == ""


def test_the_acl_file_gives_each_user_its_own_topics() -> None:
    text = render_acl_file(_records())
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body == [
        "user kilowatch",
        "topic readwrite #",
        "user plug-b",
        "topic readwrite shellies/plug-b/#",
        "topic write shellies/announce",
        "topic read shellies/command",
        "user shelly-a",
        "topic write home/a/#",
        "topic write /system/shelly-a/status",
        "topic read home/a/rpc",
        "topic read home/a/command/#",
    ]
    assert "gone" not in text


def test_anonymous_clients_get_a_section_only_when_asked() -> None:
    with_anonymous = render_acl_file([], anonymous=True).splitlines()
    first_user = with_anonymous.index(f"user {SERVICE_USER}")
    assert "topic readwrite #" in with_anonymous[:first_user]
    without = render_acl_file([]).splitlines()
    assert "topic" not in " ".join(without[: without.index(f"user {SERVICE_USER}")])


def test_private_files_are_owner_only_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_private(path, "one\n")
    write_private(path, b"two\n")
    assert path.read_text() == "two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]  # no temporary file left


async def test_the_store_keeps_records_never_passwords(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path}/k.db") as store:
        record, password = await add_device(
            store, "shelly-1", kind=DeviceKind.SHELLY, prefix=None, now=NOW
        )
        with pytest.raises(ConfigError, match=r"already has credentials.*rotate shelly-1"):
            await add_device(store, "shelly-1", kind=DeviceKind.SHELLY, prefix=None, now=NOW)
        rotated, new = await rotate_device(store, "shelly-1", now=NOW + 1)
        revoked = await revoke_device(store, "shelly-1", now=NOW + 2)
        with pytest.raises(ConfigError, match=r"is revoked.*broker user add shelly-1"):
            await rotate_device(store, "shelly-1", now=NOW + 3)
        with pytest.raises(ConfigError, match="no broker credentials"):
            await revoke_device(store, "other", now=NOW)
        again, third = await add_device(
            store, "shelly-1", kind=DeviceKind.SHELLY, prefix=None, now=NOW + 4
        )
        raw = json.dumps(await store.get_meta(CREDENTIALS_KEY))
        stored = await credentials(store)
    assert revoked.revoked and not again.revoked and again.created == NOW + 4
    assert stored == {"shelly-1": again}
    for secret in (password, new, third):
        assert secret not in raw
    assert verify_password(third, stored["shelly-1"].password_hash)
    assert rotated.rotated == NOW + 1 and record.rotated is None
