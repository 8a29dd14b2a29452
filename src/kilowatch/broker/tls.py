"""TLS for the managed broker: a local CA kilowatch makes on first use, or PEM files you give.

The local CA lives in ``<data dir>/tls/`` (directory 0700, keys 0600): ``ca.crt`` and ``ca.key``
(:func:`ensure_ca`), and the broker's ``server.crt`` and ``server.key`` that it signs
(:func:`ensure_local_tls`). Devices trust the broker through ``ca.crt``: upload it with
``Shelly.PutUserCA`` and set ``ssl_ca: "user_ca.pem"`` in ``MQTT.SetConfig`` (``kilowatch broker
ca export`` writes it out).

Choices, from what Shelly devices accept (shelly-api.md §16, docs/brokers.md):

- **Keys are EC P-256 (ECDSA with SHA-256).** Shelly devices accept RSA-2048 and ECDSA
  P-256/384/521 keys, never Ed25519; P-256 is the smallest of those and every TLS 1.2 stack has
  it (Tasmota's and mosquitto's included).
- **The broker presents its leaf certificate only**, no root: a Shelly wants "leaf +
  intermediates (no root)", and the leaf must not be a CA.
- **Subject alternative names**: the host names and addresses devices use (with "Enhanced
  Security" on, a Shelly checks them and the validity dates), plus ``localhost``, ``127.0.0.1``
  and ``::1``. The server certificate is made again, by the same CA, when the names asked for
  change or it has less than :data:`RENEW_BEFORE_DAYS` left, so devices keep trusting it.
- TLS versions are mosquitto's default (1.2 and 1.3): Shelly devices speak TLS 1.2 only.

``cryptography`` is imported inside the functions, so kilowatch works without it until TLS is used.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kilowatch.broker.credentials import write_private
from kilowatch.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

TLS_DIR = "tls"
"""Folder of the local CA and the broker's certificate, under kilowatch's data dir."""
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CA_DAYS = 3650
"""The local CA's lifetime: ten years, so devices rarely need a new ``user_ca.pem``."""
SERVER_DAYS = 825
"""The broker certificate's lifetime; renewed at start well before it ends (same CA)."""
RENEW_BEFORE_DAYS = 60
BACKDATE = dt.timedelta(hours=1)
"""Certificates start an hour in the past, for devices whose clock is slightly behind."""
ALWAYS_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}  # bind addresses, never names in a certificate


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of a TLS listener (mosquitto's ``cafile``, ``certfile``, ``keyfile``)."""

    cafile: Path
    certfile: Path
    keyfile: Path


def tls_dir(data_dir: Path) -> Path:
    return data_dir / TLS_DIR


def ensure_ca(directory: Path, *, now: dt.datetime | None = None) -> tuple[Path, bool]:
    """The local CA certificate in ``directory``, made on first use: ``(ca.crt, created)``."""
    _require_cryptography()
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        return cert_path, False
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    _private_dir(directory)
    now = now or dt.datetime.now(dt.UTC)
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kilowatch"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"kilowatch local CA ({socket.gethostname()})"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _builder(name, name, key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
    )
    write_private(key_path, _key_pem(key))
    write_private(cert_path, _sign(builder, key))
    return cert_path, True


def ensure_local_tls(
    directory: Path, hosts: Iterable[str], *, now: dt.datetime | None = None
) -> TlsFiles:
    """The local CA and a broker certificate for ``hosts`` (names or addresses), made if missing.

    A broker certificate that lacks a name asked for, was signed by another CA, or ends within
    :data:`RENEW_BEFORE_DAYS` is made again. Wildcard bind addresses (``0.0.0.0``, ``::``) are
    not names: pass the machine's host name and LAN addresses, as devices will connect to them.
    """
    _require_cryptography()
    now = now or dt.datetime.now(dt.UTC)
    ca_path, _ = ensure_ca(directory, now=now)
    names = _names(hosts)
    files = TlsFiles(ca_path, directory / SERVER_CERT, directory / SERVER_KEY)
    if not _server_cert_fits(files, names, now):
        _issue_server_cert(directory, files, names, now)
    return files


def export_ca(directory: Path) -> tuple[bytes, bool]:
    """The local CA certificate (PEM) for devices, made on first use: ``(pem, created)``."""
    path, created = ensure_ca(directory)
    return path.read_bytes(), created


def pem_files(cafile: Path, certfile: Path, keyfile: Path) -> TlsFiles:
    """Your own PEM files for the TLS listener, checked against what Shelly devices accept.

    :class:`ConfigError` when a file is unreadable, the key does not match the certificate, the
    key type is one Shelly refuses (Ed25519, RSA below 2048 bits), or the certificate is a CA.
    """
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        cert = x509.load_pem_x509_certificate(_read(certfile))
        x509.load_pem_x509_certificates(_read(cafile))
        key = serialization.load_pem_private_key(_read(keyfile), password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"TLS files are not unencrypted PEM ({err}); Shelly needs PEM") from err
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(f"{keyfile}: RSA-{key.key_size} is too short; use RSA-2048 or EC")
    elif not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in {
        "secp256r1",
        "secp384r1",
        "secp521r1",
    }:
        raise ConfigError(
            f"{keyfile}: Shelly devices accept RSA-2048 or ECDSA P-256/384/521 keys only"
        )
    if cert.public_key() != key.public_key():
        raise ConfigError(f"{keyfile} is not the private key of {certfile}")
    if _is_ca(cert):
        raise ConfigError(f"{certfile} is a CA certificate; the broker needs a leaf certificate")
    return TlsFiles(cafile, certfile, keyfile)


# --- helpers --------------------------------------------------------------------------------------


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401 - only checks that it is installed
    except ModuleNotFoundError:
        raise ConfigError(
            "TLS needs the cryptography package, which is not installed: pip install cryptography"
        ) from None


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read TLS file {path}: {err.strerror}") from err


def _names(hosts: Iterable[str]) -> tuple[str, ...]:
    """Distinct certificate names in order: the hosts asked for, then :data:`ALWAYS_NAMES`."""
    out: list[str] = []
    for host in (*hosts, *ALWAYS_NAMES):
        host = host.strip().strip("[]").lower()
        if _is_ip(host):
            host = str(ipaddress.ip_address(host))
        if host not in _WILDCARD_HOSTS and host not in out:
            out.append(host)
    return tuple(out)


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    # PKCS#8, unencrypted: the format both mosquitto and a Shelly (client keys) read.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: Any, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    from cryptography import x509

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization

    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / CA_KEY} is not the EC key kilowatch made; remove both")
    return cert, key


def _server_cert_fits(files: TlsFiles, names: Sequence[str], now: dt.datetime) -> bool:
    """Whether the broker certificate on disk can stay: same CA, every name, time left."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    if not files.certfile.exists() or not files.keyfile.exists():
        return False
    ca = x509.load_pem_x509_certificate(files.cafile.read_bytes())
    cert = x509.load_pem_x509_certificate(files.certfile.read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have = set(san.get_values_for_type(x509.DNSName))
    have |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    time_left = cert.not_valid_after_utc - now
    return set(names) <= have and time_left > dt.timedelta(days=RENEW_BEFORE_DAYS)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _issue_server_cert(
    directory: Path, files: TlsFiles, names: Sequence[str], now: dt.datetime
) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = _load_ca(directory)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), now, SERVER_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    write_private(files.keyfile, _key_pem(key))
    write_private(files.certfile, _sign(builder, ca_key))


__all__ = [
    "CA_CERT",
    "RENEW_BEFORE_DAYS",
    "TLS_DIR",
    "TlsFiles",
    "ensure_ca",
    "ensure_local_tls",
    "export_ca",
    "pem_files",
    "tls_dir",
]
