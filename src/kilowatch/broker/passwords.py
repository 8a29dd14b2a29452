"""Password hashes, once for every broker: the formats of mosquitto's password file and
kilowatch's own.

    $7$<iterations>$<salt, base64>$<hash, base64>     PBKDF2-HMAC-SHA512 (mosquitto 2.0's default)
    $6$<salt, base64>$<hash, base64>                  SHA-512 of password + salt (1.6 and earlier)
    $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt, base64>$<key, base64>   kilowatch's memory-hard one

The embedded broker verifies all three (:mod:`kilowatch.broker.embedded.auth`); the managed
mosquitto's files are written with :func:`mosquitto_hash` (:mod:`kilowatch.broker.credentials`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from functools import partial

# scrypt cost: N = 2**14, r = 8, p = 1 is the interactive-login setting of the scrypt paper (16 MiB,
# ~50 ms).
SCRYPT_LOG2_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
_PREFIX = "$scrypt$"
# mosquitto_passwd's formats (mosquitto 2.0 src/password_mosq.c: pw__hash, pw__decode): "$7$" is
# PBKDF2-HMAC-SHA512 (PW_DEFAULT_ITERATIONS 101, SALT_LEN 12), "$6$" one SHA-512 of the password
# followed by the salt; both keep the 64-byte digest, standard base64 with padding.
MOSQUITTO_PBKDF2_PREFIX = "$7$"
MOSQUITTO_SHA512_PREFIX = "$6$"
_MOSQUITTO_KEY_BYTES = 64
MOSQUITTO_SALT_BYTES = 12
PBKDF2_ITERATIONS = 1000
"""Iterations of the ``$7$`` hashes we write. mosquitto_passwd 2.0 writes 101. The passwords are
random (``credentials.PASSWORD_BYTES``), so no iteration count makes guessing them any harder;
mosquitto checks a hash on its one thread at every CONNECT, so it stays cheap (about 1 ms) even when
a hundred devices reconnect at once after a restart."""
# Far above any sensible mosquitto_passwd -I; a typo must not stall every CONNECT.
_MAX_PBKDF2_ITERATIONS = 10_000_000


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64_padded(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    """Standard base64, padded (mosquitto) or not (our scrypt lines)."""
    text = text.rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as err:
        raise ValueError(f"salt or hash is not base64: {err}") from None


def _scrypt(password: bytes, *, salt: bytes, log2_n: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << log2_n
    # OpenSSL refuses scrypt calls whose memory need (128 * N * r * p) exceeds maxmem; size it to
    # fit.
    maxmem = 128 * n * r * (p + 2) + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def scrypt_hash(password: str, *, log2_n: int = SCRYPT_LOG2_N) -> str:
    """kilowatch's own password-file hash of ``password`` (``$scrypt$``), with a fresh salt."""
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(
        password.encode("utf-8"), salt=salt, log2_n=log2_n, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_BYTES
    )
    return f"{_PREFIX}ln={log2_n},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


Deriver = Callable[[bytes], bytes]
"""Turns a candidate password into what the hash stores (the salt and costs bound in)."""


def parse_hash(encoded: str) -> tuple[Deriver, bytes]:
    """How to derive a key from a password, and the key stored, for a supported hash.

    Raises ``ValueError`` (or ``KeyError``) saying what is wrong with ``encoded``.
    """
    if encoded.startswith(_PREFIX):
        return _parse_scrypt(encoded)
    if encoded.startswith(MOSQUITTO_PBKDF2_PREFIX):
        iterations, salt, key = _fields(encoded, MOSQUITTO_PBKDF2_PREFIX, "iterations$salt$hash")
        if not iterations.isdigit():
            raise ValueError(f"PBKDF2 iterations {iterations!r} is not a number")
        rounds = int(iterations)
        if not 1 <= rounds <= _MAX_PBKDF2_ITERATIONS:
            raise ValueError(f"PBKDF2 iterations {rounds} out of range")
        return partial(_pbkdf2_sha512, salt=_unb64(salt), rounds=rounds), _mosquitto_key(key)
    if encoded.startswith(MOSQUITTO_SHA512_PREFIX):
        salt, key = _fields(encoded, MOSQUITTO_SHA512_PREFIX, "salt$hash")
        return partial(_salted_sha512, salt=_unb64(salt)), _mosquitto_key(key)
    raise ValueError("unknown hash; expected $7$ or $6$ (mosquitto_passwd) or $scrypt$")


def _fields(encoded: str, prefix: str, layout: str) -> list[str]:
    fields = encoded[len(prefix) :].split("$")
    if len(fields) != layout.count("$") + 1:
        raise ValueError(f"expected {prefix}{layout}")
    return fields


def _parse_scrypt(encoded: str) -> tuple[Deriver, bytes]:
    params, salt, key = _fields(encoded, _PREFIX, "ln=..,r=..,p=..$salt$key")
    fields = dict(item.split("=", 1) for item in params.split(","))
    log2_n, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
    if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    raw_key = _unb64(key)
    derive = partial(_scrypt, salt=_unb64(salt), log2_n=log2_n, r=r, p=p, dklen=len(raw_key))
    return derive, raw_key


def _mosquitto_key(text: str) -> bytes:
    key = _unb64(text)
    if len(key) != _MOSQUITTO_KEY_BYTES:
        raise ValueError(f"hash of {len(key)} bytes, expected {_MOSQUITTO_KEY_BYTES}")
    return key


def _pbkdf2_sha512(password: bytes, *, salt: bytes, rounds: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password, salt, rounds, _MOSQUITTO_KEY_BYTES)


def _salted_sha512(password: bytes, *, salt: bytes) -> bytes:
    return hashlib.sha512(password + salt).digest()


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """``$7$<iterations>$<salt>$<key>``: mosquitto 2.x's PBKDF2-HMAC-SHA512 password hash
    (standard base64 with padding; a 12-byte salt and the 64-byte key, as mosquitto_passwd
    writes), for the password files of the managed mosquitto."""
    salt = secrets.token_bytes(MOSQUITTO_SALT_BYTES) if salt is None else salt
    key = _pbkdf2_sha512(password.encode(), salt=salt, rounds=iterations)
    return f"{MOSQUITTO_PBKDF2_PREFIX}{iterations}${_b64_padded(salt)}${_b64_padded(key)}"


def verify_password(password: str | bytes, encoded: str) -> bool:
    """Whether ``password`` matches a hash of any supported format (constant-time compare)."""
    raw = password.encode("utf-8") if isinstance(password, str) else password
    try:
        derive, key = parse_hash(encoded)
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(derive(raw), key)


__all__ = [
    "MOSQUITTO_PBKDF2_PREFIX",
    "MOSQUITTO_SHA512_PREFIX",
    "PBKDF2_ITERATIONS",
    "SCRYPT_LOG2_N",
    "mosquitto_hash",
    "parse_hash",
    "scrypt_hash",
    "verify_password",
]
