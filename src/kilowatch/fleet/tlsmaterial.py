"""TLS material for Shelly devices: checked as the devices require, then uploaded in chunks.

Shelly devices take a CA bundle (``Shelly.PutUserCA``, then MQTT ``ssl_ca: "user_ca.pem"``) and a
client certificate chain with its key for mutual TLS (``Shelly.PutTLSClientCert`` /
``PutTLSClientKey``, MQTT ``use_client_cert``). What they accept (shared/shelly-api.md §16): PEM or
DER; keys PKCS#8 or PKCS#1, unencrypted; RSA of 2048 bits or more, or ECDSA on P-256, P-384 or
P-521 (no Ed25519); the client chain is the leaf then its intermediates (no root, at most 8
intermediates), and the leaf is no CA. A device that is handed anything else fails the
handshake much later, with nothing in the log; :func:`load_material` refuses it up front, naming
the file and the problem.

The devices give no way to read the material back, so after a complete upload
:func:`upload_material` records the material's hash in the device's KVS
(``kilowatch.tls``); :func:`material_on_device` reads it, and :func:`ensure_material` uploads only
when it differs, which makes a second apply change nothing.

Key material is never logged; ``repr(TlsMaterial)`` shows hashes only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from kilowatch.errors import DeviceError, FleetError, RpcCallError
from kilowatch.fleet.rpc.base import SCRIPT_CHUNK, ShellyRpc

logger = logging.getLogger(__name__)

MAX_INTERMEDIATES = 8
"""Intermediates a client chain may carry after its leaf (shared/shelly-api.md §16)."""
RSA_MIN_BITS = 2048
"""Shortest RSA key the devices take (§16: RSA-2048)."""
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
"""ECDSA curves the devices take (§16)."""
TLS_KVS_KEY = "kilowatch.tls"
"""KVS key holding the hash of the material kilowatch uploaded last (≤ 42 characters, §15)."""
NOT_FOUND = -105
"""The device's code for a missing KVS key (§2.4, §15)."""

PUT_METHODS = (
    ("ca", "Shelly.PutUserCA"),
    ("cert", "Shelly.PutTLSClientCert"),
    ("key", "Shelly.PutTLSClientKey"),
)
"""Which part goes with which call, in upload order (§10, §16)."""

Source = str | bytes | os.PathLike[str]
"""A file path, or the material itself: PEM text (a ``str`` holding ``-----BEGIN``) or bytes (PEM
or DER)."""

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_KEY_LABELS = {"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"}


@dataclass(frozen=True, repr=False)
class TlsMaterial:
    """Validated material as normalised PEM text: ``ca`` (the CA bundle), ``cert`` (leaf first,
    then intermediates) and ``key`` (PKCS#8, unencrypted); a part not managed is ``None``."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def sha256(self) -> str:
        """Hex SHA-256 over all three parts (what :func:`upload_material` records)."""
        digest = hashlib.sha256()
        for name, text in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
            digest.update(f"{name}\0{'-' if text is None else text}\0".encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        def part(text: str | None, what: str) -> str:
            if text is None:
                return "None"
            short = hashlib.sha256(text.encode()).hexdigest()[:12]
            return f"<{what} sha256:{short}>"

        certs = (self.ca or "").count("-----BEGIN CERTIFICATE-----")
        chain = (self.cert or "").count("-----BEGIN CERTIFICATE-----")
        return (
            f"TlsMaterial(ca={part(self.ca, f'{certs} CA certificate(s)')}, "
            f"cert={part(self.cert, f'chain of {chain}')}, key={part(self.key, 'private key')})"
        )

    __str__ = __repr__


# --- reading --------------------------------------------------------------------------------


def _read(source: Source, what: str) -> tuple[str, bytes]:
    """``(subject, data)``: the subject names the file, or says the material came inline."""
    if isinstance(source, bytes):
        return f"{what} (given inline)", source
    if isinstance(source, str) and "-----BEGIN" in source:
        return f"{what} (given as PEM text)", source.encode()
    path = Path(source)
    try:
        return str(path), path.read_bytes()
    except OSError as err:
        raise FleetError(str(path), f"cannot read the {what} file: {err.strerror or err}") from err


def _blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), m.group(0)) for m in _BLOCK.finditer(data)]


def _when(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "no subject"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_public_key(key: object, subject: str, what: str) -> None:
    """Refuse key types and sizes the devices' TLS stack does not take."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < RSA_MIN_BITS:
            raise FleetError(
                subject,
                f"{what} is RSA-{key.key_size}; devices take RSA keys of {RSA_MIN_BITS} bits "
                "or more (or ECDSA P-256/P-384/P-521)",
            )
        return
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name not in EC_CURVES:
            raise FleetError(
                subject,
                f"{what} is on EC curve {key.curve.name}; devices take P-256, P-384 or P-521",
            )
        return
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        kind = "Ed25519"
    elif isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        kind = "Ed448"
    else:  # DSA and the rest, by class name (touching cryptography's dsa module warns)
        kind = type(key).__name__.removesuffix("PrivateKey").removesuffix("PublicKey")
    raise FleetError(
        subject,
        f"{what} uses {kind}, which Shelly devices do not support; use ECDSA P-256 "
        f"(or RSA-{RSA_MIN_BITS}) instead",
    )


def _certificates(
    source: Source, what: str, now: dt.datetime
) -> tuple[str, list[x509.Certificate]]:
    subject, data = _read(source, what)
    blocks = _blocks(data)
    if not blocks:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError as err:
            raise FleetError(
                subject,
                f"is not a certificate: no PEM block (-----BEGIN CERTIFICATE-----) and not DER "
                f"either ({err})",
            ) from err
    else:
        certs = []
        for label, block in blocks:
            if "PRIVATE KEY" in label:
                raise FleetError(
                    subject,
                    f"holds a private key ({label}) among the certificates; keep the key in a "
                    "file of its own, readable by its owner only",
                )
            if label != "CERTIFICATE":
                raise FleetError(subject, f"holds a {label} block; only CERTIFICATE blocks go here")
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError as err:
                raise FleetError(
                    subject, f"certificate {len(certs) + 1} does not parse: {err}"
                ) from err
    for n, cert in enumerate(certs, 1):
        _check_dates(subject, n, cert, now)
        _check_public_key(cert.public_key(), subject, f"certificate {n} ({_name(cert)})")
    return subject, certs


def _check_dates(subject: str, n: int, cert: x509.Certificate, now: dt.datetime) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    span = f"valid {_when(start)} to {_when(end)}, now {_when(now)}"
    if end < now:
        raise FleetError(
            subject,
            f"certificate {n} ({_name(cert)}) expired on {_when(end)} ({span}); renew it",
        )
    if start > now:
        raise FleetError(
            subject,
            f"certificate {n} ({_name(cert)}) is not valid before {_when(start)} ({span}); "
            "check this machine's clock or wait",
        )


def _pem(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


# --- the three parts ------------------------------------------------------------------------


def _ca_bundle(source: Source, now: dt.datetime) -> str:
    subject, certs = _certificates(source, "CA bundle", now)
    for n, cert in enumerate(certs, 1):
        if not _is_ca(cert):
            raise FleetError(
                subject,
                f"certificate {n} ({_name(cert)}) is not a CA certificate (no basicConstraints "
                "CA:TRUE); the CA bundle holds the CAs that signed the broker's certificate",
            )
    return _pem(certs)


def _chain(source: Source, now: dt.datetime) -> tuple[str, list[x509.Certificate]]:
    subject, certs = _certificates(source, "client certificate", now)
    leaves = [n for n, c in enumerate(certs, 1) if not _is_ca(c)]
    if _is_ca(certs[0]):
        if leaves:
            raise FleetError(
                subject,
                f"the certificates are out of order: certificate {leaves[0]} "
                f"({_name(certs[leaves[0] - 1])}) is the client certificate (no CA) and must "
                "come first, then its issuer, then that one's issuer",
            )
        raise FleetError(
            subject,
            f"certificate 1 ({_name(certs[0])}) is a CA certificate; the client certificate "
            "(the leaf) must not be a CA",
        )
    for n, cert in enumerate(certs, 1):
        if _self_signed(cert):
            raise FleetError(
                subject,
                f"certificate {n} ({_name(cert)}) is self-signed (a root); a client chain holds "
                "the leaf and its intermediates only: leave the root to the broker's CA file",
            )
        if n > 1 and not _is_ca(cert):
            raise FleetError(
                subject, f"certificate {n} ({_name(cert)}) is an intermediate but no CA"
            )
    if len(certs) - 1 > MAX_INTERMEDIATES:
        raise FleetError(
            subject,
            f"the chain has {len(certs) - 1} intermediates; devices take at most "
            f"{MAX_INTERMEDIATES}",
        )
    for n in range(1, len(certs)):
        _check_issued(subject, n, certs[n - 1], certs[n])
    return subject, certs


def _check_issued(subject: str, n: int, cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
        return
    except (ValueError, TypeError, InvalidSignature) as err:
        reason = str(err) or type(err).__name__
    reversed_order = issuer.issuer == cert.subject
    raise FleetError(
        subject,
        f"certificate {n} ({_name(cert)}) is not signed by certificate {n + 1} "
        f"({_name(issuer)}): {reason}; "
        + (
            "they are in reverse order: "
            if reversed_order
            else f"its issuer is {cert.issuer.rfc4514_string()}; "
        )
        + "the chain goes leaf first, then each certificate's issuer",
    )


def _private_key(source: Source) -> tuple[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    subject, data = _read(source, "private key")
    blocks = _blocks(data)
    labels = [label for label, _ in blocks]
    encrypted = "ENCRYPTED PRIVATE KEY" in labels or b"Proc-Type: 4,ENCRYPTED" in data
    if encrypted:
        raise FleetError(
            subject,
            "the private key is encrypted; devices take unencrypted keys only: decrypt it "
            "(openssl pkey -in KEY -out PLAIN) and keep the result readable by its owner only",
        )
    if "CERTIFICATE" in labels:
        raise FleetError(subject, "holds a certificate too; give the private key alone")
    keys = [(label, block) for label, block in blocks if label.endswith("PRIVATE KEY")]
    if blocks and len(keys) != 1:
        found = ", ".join(labels)
        raise FleetError(subject, f"must hold exactly one private key, found: {found}")
    if keys and keys[0][0] not in _KEY_LABELS:
        raise FleetError(
            subject,
            f"is a {keys[0][0]}; devices take PKCS#8 (PRIVATE KEY) or PKCS#1 "
            "(RSA/EC PRIVATE KEY) keys",
        )
    try:
        if keys:
            key = serialization.load_pem_private_key(keys[0][1], password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError as err:  # cryptography's "password was not given but key is encrypted"
        raise FleetError(
            subject, "the private key is encrypted; devices take unencrypted keys only"
        ) from err
    except UnsupportedAlgorithm as err:
        raise FleetError(subject, f"the private key's algorithm is not supported: {err}") from err
    except ValueError as err:
        # cryptography's messages describe the structure, never the key's bytes.
        what = "does not parse" if keys else "is not a private key: no PEM block and not DER"
        raise FleetError(subject, f"{what} ({err})") from err
    _check_public_key(key, subject, "the private key")
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return subject, key


def _spki(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_material(
    *,
    ca: Source | None = None,
    cert: Source | None = None,
    key: Source | None = None,
    now: dt.datetime | None = None,
) -> TlsMaterial:
    """Read and check TLS material as Shelly devices require (module docstring), each part a
    file path or the material itself (PEM text, or PEM/DER bytes); DER is converted to PEM.

    ``cert`` and ``key`` go together and the key must belong to the chain's leaf. ``now``
    (default: the current time) is when certificates must be valid. Any problem raises
    :class:`FleetError` whose ``subject`` is the file (or "client certificate (given as PEM
    text)") and whose message says exactly what is wrong, with dates for expired certificates.
    """
    when = now if now is not None else dt.datetime.now(dt.UTC)
    if ca is None and cert is None and key is None:
        raise FleetError("TLS material", "nothing given: pass a CA bundle, or a cert and its key")
    if (cert is None) != (key is None):
        given, missing = ("client certificate", "key") if key is None else ("key", "certificate")
        raise FleetError("TLS material", f"a {given} was given without its {missing}")
    ca_pem = _ca_bundle(ca, when) if ca is not None else None
    cert_pem = key_pem = None
    if cert is not None and key is not None:
        cert_subject, chain = _chain(cert, when)
        key_subject, private = _private_key(key)
        if _spki(private.public_key()) != _spki(chain[0].public_key()):
            raise FleetError(
                key_subject,
                f"the private key does not belong to the client certificate {cert_subject} "
                f"({_name(chain[0])}): their public keys differ",
            )
        cert_pem = _pem(chain)
        key_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return TlsMaterial(ca=ca_pem, cert=cert_pem, key=key_pem)


# --- the device side ------------------------------------------------------------------------


async def material_on_device(rpc: ShellyRpc) -> str | None:
    """The hash :func:`upload_material` recorded on the device (``KVS.Get kilowatch.tls``), or
    ``None`` when none is recorded (the device never got material from kilowatch, or an upload
    did not finish)."""
    try:
        result = await rpc.call("KVS.Get", {"key": TLS_KVS_KEY})
    except RpcCallError as err:
        if err.code == NOT_FOUND:
            return None
        raise
    value = result.get("value") if isinstance(result, dict) else None
    return value if isinstance(value, str) else None


async def _put(rpc: ShellyRpc, method: str, text: str) -> str:
    chunks = [text[i : i + SCRIPT_CHUNK] for i in range(0, len(text), SCRIPT_CHUNK)]
    stored = 0
    for n, chunk in enumerate(chunks):
        stored = await rpc.put_pem(method, chunk, append=n > 0)
    size = len(text.encode())
    if stored != size:
        raise DeviceError(rpc.label, f"{method}: the device stored {stored} of {size} bytes")
    return f"{method}: {size} bytes in {len(chunks)} chunk(s)"


async def upload_material(rpc: ShellyRpc, material: TlsMaterial) -> list[str]:
    """Upload every part of ``material`` the way the official tools do: chunks of at most
    :data:`SCRIPT_CHUNK` characters, the first with ``append: false``, the next appended; then
    record ``material.sha256`` in KVS. Returns the steps done, in words.

    The record is removed first, so an upload cut short never passes for complete. Raises the
    ``DeviceError`` family (the device's own -103 when it refuses the PEM).
    """
    steps: list[str] = []
    try:
        await rpc.call("KVS.Delete", {"key": TLS_KVS_KEY})
        steps.append(f"KVS.Delete {TLS_KVS_KEY}")
    except RpcCallError as err:
        if err.code != NOT_FOUND:
            raise
    for part, method in PUT_METHODS:
        text = getattr(material, part)
        if text is not None:
            steps.append(await _put(rpc, method, text))
    await rpc.call("KVS.Set", {"key": TLS_KVS_KEY, "value": material.sha256})
    steps.append(f"KVS.Set {TLS_KVS_KEY} = {material.sha256[:12]}")
    logger.info("%s: TLS material %r uploaded", rpc.label, material)
    return steps


async def ensure_material(rpc: ShellyRpc, material: TlsMaterial) -> list[str]:
    """Upload ``material`` unless the device records the same hash; returns the steps done
    (empty: the device already holds it)."""
    if await material_on_device(rpc) == material.sha256:
        return []
    return await upload_material(rpc, material)


__all__ = [
    "EC_CURVES",
    "MAX_INTERMEDIATES",
    "PUT_METHODS",
    "RSA_MIN_BITS",
    "TLS_KVS_KEY",
    "Source",
    "TlsMaterial",
    "ensure_material",
    "load_material",
    "material_on_device",
    "upload_material",
]
