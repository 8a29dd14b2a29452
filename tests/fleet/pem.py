"""Test helper: throwaway PKIs (root → intermediate → leaf) with any key type, validity and
order, for the TLS material checks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(kind: str = "ec") -> PrivateKey:
    """``ec`` (P-256), ``p384``, ``k256`` (secp256k1), ``rsa`` (2048), ``rsa1024``, ``ed25519``."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "k256":
        return ec.generate_private_key(ec.SECP256K1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def issue(
    cn: str,
    *,
    key: PrivateKey | None = None,
    issuer: Issued | None = None,
    ca: bool = False,
    not_before: dt.datetime = NOW - dt.timedelta(days=1),
    not_after: dt.datetime = NOW + dt.timedelta(days=365),
) -> Issued:
    """A certificate for ``cn`` signed by ``issuer`` (self-signed when ``None``)."""
    key = key if key is not None else new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer = issuer.key if issuer is not None else key
    # Ed25519 signs without a separate hash.
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, algorithm)
    )
    return Issued(cert, key)


def key_pem(
    key: PrivateKey,
    *,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
    password: bytes | None = None,
    encoding: serialization.Encoding = serialization.Encoding.PEM,
) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password is not None
        else serialization.NoEncryption()
    )
    return key.private_bytes(encoding, fmt, encryption)


@dataclass
class Pki:
    root: Issued
    intermediate: Issued
    leaf: Issued

    @property
    def chain(self) -> str:
        return self.leaf.pem + self.intermediate.pem

    @property
    def key(self) -> str:
        return key_pem(self.leaf.key).decode()


def pki(kind: str = "ec") -> Pki:
    """Root CA → intermediate CA → client leaf, all keys of ``kind``."""
    root = issue("Test Root", key=new_key(kind), ca=True)
    inter = issue("Test Intermediate", key=new_key(kind), issuer=root, ca=True)
    client = issue("shellypmminig3-aabbccddeeff", key=new_key(kind), issuer=inter)
    return Pki(root, inter, client)
