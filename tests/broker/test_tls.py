"""The local CA and the broker certificate: made once, owner-only, what a Shelly accepts (EC
P-256, leaf only, not a CA, the names asked for), renewed when names or time run out; given PEM
files checked. A TLS handshake against mosquitto is in test_mosquitto.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from kilowatch.broker.tls import (
    RENEW_BEFORE_DAYS,
    ensure_ca,
    ensure_local_tls,
    export_ca,
    pem_files,
)
from kilowatch.errors import ConfigError
from kilowatch.testing.tls import self_signed_cert


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(san.get_values_for_type(x509.DNSName)) | ips


def test_the_local_ca_and_server_certificate(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "tls", ["kilowatch.lan", "192.168.1.20", "0.0.0.0"])
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    for path in (tmp_path / "tls").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ca, leaf = _cert(files.cafile), _cert(files.certfile)
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _names(leaf) == {"kilowatch.lan", "192.168.1.20", "localhost", "127.0.0.1", "::1"}
    for key_path in (files.keyfile, tmp_path / "tls" / "ca.key"):
        pem = key_path.read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    # the leaf alone: a Shelly wants no root in the chain
    assert files.certfile.read_bytes().count(b"BEGIN CERTIFICATE") == 1


def test_made_once_then_reused_and_renewed_by_the_same_ca(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    first = ensure_local_tls(directory, ["kilowatch.lan"])
    ca_pem, leaf_pem = first.cafile.read_bytes(), first.certfile.read_bytes()
    assert ensure_local_tls(directory, ["kilowatch.lan"]) == first
    assert first.certfile.read_bytes() == leaf_pem

    ensure_local_tls(directory, ["kilowatch.lan", "10.0.0.2"])  # a new name: a new leaf
    assert "10.0.0.2" in _names(_cert(first.certfile))
    renewed_pem = first.certfile.read_bytes()
    assert renewed_pem != leaf_pem

    leaf = _cert(first.certfile)
    late = leaf.not_valid_after_utc - dt.timedelta(days=RENEW_BEFORE_DAYS - 1)
    ensure_local_tls(directory, ["kilowatch.lan", "10.0.0.2"], now=late)
    assert first.certfile.read_bytes() != renewed_pem
    assert first.cafile.read_bytes() == ca_pem  # devices keep trusting it
    _cert(first.certfile).verify_directly_issued_by(_cert(first.cafile))


def test_export_makes_the_ca_on_first_use(tmp_path: Path) -> None:
    pem, created = export_ca(tmp_path / "tls")
    assert created and pem.startswith(b"-----BEGIN CERTIFICATE-----")
    again, created_again = export_ca(tmp_path / "tls")
    assert (again, created_again) == (pem, False)
    assert ensure_ca(tmp_path / "tls")[0].read_bytes() == pem


def test_given_pem_files_are_accepted_when_a_shelly_would(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "tls", ["kilowatch.lan"])
    assert pem_files(files.cafile, files.certfile, files.keyfile) == files


def test_given_pem_files_are_refused_when_a_shelly_would_not(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "tls", ["kilowatch.lan"])
    ca_key = tmp_path / "tls" / "ca.key"
    with pytest.raises(ConfigError, match="is a CA certificate"):
        pem_files(files.cafile, files.cafile, ca_key)
    with pytest.raises(ConfigError, match="is not the private key of"):
        pem_files(files.cafile, files.certfile, ca_key)
    ed = tmp_path / "ed.key"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="RSA-2048 or ECDSA P-256/384/521 keys only"):
        pem_files(files.cafile, files.certfile, ed)
    with pytest.raises(ConfigError, match="cannot read TLS file"):
        pem_files(files.cafile, tmp_path / "missing.crt", files.keyfile)
    cert, key = self_signed_cert(tmp_path)  # a self-signed CA used as its own leaf
    with pytest.raises(ConfigError, match="is a CA certificate"):
        pem_files(cert, cert, key)


def test_ip_names_are_normalised(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "tls", ["[0:0:0:0:0:0:0:1]", "KiloWatch.LAN"])
    names = _names(_cert(files.certfile))
    assert str(ipaddress.ip_address("::1")) in names and "kilowatch.lan" in names


def test_without_cryptography_tls_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cryptography", None)  # import cryptography now fails
    with pytest.raises(ConfigError, match="pip install cryptography"):
        export_ca(tmp_path / "tls")
    assert not (tmp_path / "tls").exists()
