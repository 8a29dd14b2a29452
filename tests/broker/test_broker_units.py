"""Pure parts of the embedded broker: password hashing, option checks and the async context
manager's contract (the MQTT codec and topic matching it uses are tested in tests/mqtt)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from kilowatch.broker.embedded import EmbeddedBroker, load_password_file, server_tls_context
from kilowatch.broker.passwords import scrypt_hash, verify_password
from kilowatch.errors import BrokerError
from kilowatch.testing.tls import self_signed_cert


def test_password_hash_round_trip() -> None:
    encoded = scrypt_hash("correct horse", log2_n=10)
    assert encoded.startswith("$scrypt$ln=10,r=8,p=1$")
    assert verify_password(b"correct horse", encoded)
    assert not verify_password(b"correct horse!", encoded)
    assert not verify_password(b"correct horse", "$scrypt$garbage")
    assert scrypt_hash("correct horse", log2_n=10) != encoded  # fresh salt


MOSQUITTO_PASSWD = Path(__file__).with_name("mosquitto-passwd.txt")
# The passwords of the users in mosquitto-passwd.txt (its comments say how each line was made).
MOSQUITTO_USERS = {"meter": "s3cret", "legacy": "old pass", "installer": "pa:ss wörd"}


def test_mosquitto_passwd_lines_verify() -> None:
    users = load_password_file(MOSQUITTO_PASSWD)
    assert list(users) == list(MOSQUITTO_USERS)
    assert users["legacy"].startswith("$6$") and users["installer"].startswith("$7$1000$")
    for user, password in MOSQUITTO_USERS.items():
        assert verify_password(password.encode(), users[user])
        assert not verify_password(password.encode() + b"x", users[user])
        assert not verify_password(b"", users[user])
    # the salt is part of the hash: another user's salt does not verify the same password
    meter_hash = users["meter"].split("$")[-1]
    installer = users["installer"].split("$")
    assert not verify_password(b"s3cret", "$".join([*installer[:-1], meter_hash]))


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")
@pytest.mark.parametrize("options", [[], ["-H", "sha512"], ["-H", "sha512-pbkdf2", "-I", "7"]])
def test_lines_made_by_mosquitto_passwd_now_verify(tmp_path: Path, options: list[str]) -> None:
    passwd = tmp_path / "passwd"
    tool = shutil.which("mosquitto_passwd")
    assert tool is not None
    subprocess.run([tool, *options, "-c", "-b", passwd, "dev", "pw:1 é"], check=True, timeout=60)
    encoded = load_password_file(passwd)["dev"]
    assert verify_password("pw:1 é".encode(), encoded)
    assert not verify_password(b"pw:1", encoded)


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("alice:plaintext", "unknown hash"),
        ("alice", "expected user:hash"),
        (":$6$abc$def", "expected user:hash"),
        ("alice:$6$c2FsdA==$c2hvcnQ=", "hash of 5 bytes, expected 64"),
        ("alice:$7$0$c2FsdA==$" + "A" * 86 + "==", "iterations 0 out of range"),
        ("alice:$7$many$c2FsdA==$" + "A" * 86 + "==", "iterations 'many' is not a number"),
        ("alice:$7$101$not base64!$" + "A" * 86 + "==", "salt or hash is not base64"),
        ("alice:$6$onlysalt", "expected $6$salt$hash"),
        ("alice:$scrypt$ln=10,r=8,p=1$c2FsdA", "expected $scrypt$ln=..,r=..,p=..$salt$key"),
    ],
)
def test_bad_password_file_lines_name_file_line_and_tools(
    tmp_path: Path, line: str, complaint: str
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(f"# users\n{line}\n")
    with pytest.raises(BrokerError) as err:
        load_password_file(passwd)
    text = str(err.value)
    assert text.startswith(f"{passwd}:2: not a 'user:hash' line (")
    assert complaint in text
    assert f"'mosquitto_passwd {passwd} USER'" in text
    assert "python -m kilowatch.broker.embedded.auth USER" in text


def test_invalid_options_are_clear_errors() -> None:
    with pytest.raises(BrokerError, match="invalid broker port 70000"):
        EmbeddedBroker(port=70000)
    with pytest.raises(BrokerError, match="max_inflight_messages"):
        EmbeddedBroker(port=0, max_inflight_messages=0)
    with pytest.raises(BrokerError, match=r"session_expiry_s must be > 0 \(or None: never\)"):
        EmbeddedBroker(port=0, session_expiry_s=0)


async def test_callers_exception_propagates_unchanged() -> None:
    with pytest.raises(KeyError):
        async with EmbeddedBroker(port=0) as broker:
            assert broker.port != 0
            raise KeyError("boom")


async def test_context_manager_stops_listening() -> None:
    async with EmbeddedBroker(port=0) as broker:
        port = broker.port
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_password_line_tool(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "kilowatch.broker.embedded.auth", "meter"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=60,
        check=True,
    )
    line = done.stdout.strip()
    (tmp_path / "passwd").write_text(line + "\n")
    users = load_password_file(tmp_path / "passwd")
    assert list(users) == ["meter"]
    assert verify_password(b"s3cret", users["meter"])


def test_tls_context_from_pem_files(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    assert server_tls_context(cert, key).minimum_version >= ssl.TLSVersion.TLSv1_2
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    server_tls_context(both)  # the key may sit in the certificate's file


def test_tls_context_errors_name_the_files(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed_cert(tmp_path / "other")
    with pytest.raises(BrokerError) as err:
        server_tls_context(cert, other_key)
    assert str(err.value) == (
        f"the embedded broker's TLS certificate and key ({cert} and {other_key}) do not load: "
        "the private key is not the certificate's"
    )
    with pytest.raises(
        BrokerError, match=r"cannot read .* \(.*missing\.pem and .*key\.pem\): No such file"
    ):
        server_tls_context(tmp_path / "missing.pem", key)
    with pytest.raises(BrokerError, match=r"no PEM certificate and private key found"):
        server_tls_context(cert)  # no key in the certificate's file
    encrypted = tmp_path / "encrypted.pem"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(BrokerError, match=rf"TLS key \({encrypted}\) is encrypted; give it unenc"):
        server_tls_context(cert, encrypted)
