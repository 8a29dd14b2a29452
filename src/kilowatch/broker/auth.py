"""User names and passwords for the embedded broker.

Two sources, usable together: a mapping of user → plain password (what ``--mqtt-user`` /
``--mqtt-password`` give), and a password file of ``user:hash`` lines, one per user. The file is
mosquitto's: lines written by ``mosquitto_passwd`` work as they are, in both of its formats,

    $7$<iterations>$<salt, base64>$<hash, base64>     PBKDF2-HMAC-SHA512 (its default since 2.0)
    $6$<salt, base64>$<hash, base64>                  SHA-512 of password + salt (1.6 and earlier)

and kilowatch adds a memory-hard one, made by :func:`hash_password` (``python -m
kilowatch.broker.auth USER`` prints such a line):

    $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt, base64>$<key, base64>

Blank lines and lines starting with ``#`` are ignored. Checking a hash can take tens of
milliseconds (scrypt, or PBKDF2 with many iterations); :meth:`Authenticator.verify` does it on a
worker thread and remembers successful checks, so a device that reconnects every minute costs one
hash per broker run.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from kilowatch.errors import BrokerError

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
# Far above any sensible mosquitto_passwd -I; a typo must not stall every CONNECT.
_MAX_PBKDF2_ITERATIONS = 10_000_000


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


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


def hash_password(password: str, *, log2_n: int = SCRYPT_LOG2_N) -> str:
    """A password-file hash of ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(
        password.encode("utf-8"), salt=salt, log2_n=log2_n, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_BYTES
    )
    return f"{_PREFIX}ln={log2_n},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


Deriver = Callable[[bytes], bytes]
"""Turns a candidate password into what the hash stores (the salt and costs bound in)."""


def _parse_hash(encoded: str) -> tuple[Deriver, bytes]:
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


def verify_password(password: bytes, encoded: str) -> bool:
    """Whether ``password`` matches a password-file hash (constant-time compare)."""
    try:
        derive, key = _parse_hash(encoded)
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(derive(password), key)


def load_password_file(path: str | Path) -> dict[str, str]:
    """Read ``user:hash`` lines; raise :class:`BrokerError` naming file and line on bad input."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BrokerError(f"cannot read the broker password file {path}: {err.strerror}") from err
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        try:
            if not sep or not user:
                raise ValueError("expected user:hash")
            _parse_hash(encoded)
        except (ValueError, KeyError) as err:
            raise BrokerError(
                f"{path}:{number}: not a 'user:hash' line ({err}); make lines with "
                f"'mosquitto_passwd {path} USER' or 'python -m kilowatch.broker.auth USER'"
            ) from err
        users[user] = encoded
    return users


class Authenticator:
    """Checks CONNECT credentials against plain passwords and password-file hashes.

    ``enabled`` is false when no user is configured: then every client is let in.
    """

    def __init__(
        self, users: Mapping[str, str] | None = None, password_file: str | Path | None = None
    ) -> None:
        self._plain = dict(users or {})
        self._hashed = load_password_file(password_file) if password_file is not None else {}
        # Successful hash checks, keyed by a fast digest so the plain password is not kept in
        # memory.
        self._verified: set[tuple[str, bytes]] = set()

    @property
    def enabled(self) -> bool:
        """Whether any user is configured (and anonymous clients are therefore refused)."""
        return bool(self._plain or self._hashed)

    def knows(self, username: str) -> bool:
        """Whether ``username`` is configured."""
        return username in self._plain or username in self._hashed

    async def verify(self, username: str, password: bytes) -> bool:
        """Whether the pair is valid. Hash checks run on a thread so the event loop never blocks."""
        plain = self._plain.get(username)
        if plain is not None:
            return hmac.compare_digest(plain.encode("utf-8"), password)
        encoded = self._hashed.get(username)
        if encoded is None:
            return False
        memo = (username, hashlib.sha256(encoded.encode() + b"\0" + password).digest())
        if memo in self._verified:
            return True
        ok = await asyncio.to_thread(verify_password, password, encoded)
        if ok:
            self._verified.add(memo)
        return ok


def main(argv: list[str] | None = None) -> int:
    """``python -m kilowatch.broker.auth USER``: print a password-file line.

    The password is read from a prompt, or from the first line of stdin when it is not a terminal.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or ":" in args[0] or args[0].startswith("-"):
        print("usage: python -m kilowatch.broker.auth USER  (reads the password; prints USER:HASH)")
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args[0]}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 1
    print(f"{args[0]}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
