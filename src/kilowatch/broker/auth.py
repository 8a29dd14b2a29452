"""User names and passwords for the embedded broker.

Two sources, usable together: a mapping of user → plain password (what ``--mqtt-user`` /
``--mqtt-password`` give), and a password file of ``user:hash`` lines, one per user, where the
hash is

    $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt, base64>$<key, base64>

made by :func:`hash_password` (``python -m kilowatch.broker.auth USER`` prints such a line).
Blank lines and lines starting with ``#`` are ignored. scrypt is memory-hard, so checking a hash
takes tens of milliseconds; :meth:`Authenticator.verify` does it on a worker thread and remembers
successful checks, so a device that reconnects every minute costs one hash per broker run.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import hmac
import os
import sys
from collections.abc import Mapping
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


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << log2_n
    # OpenSSL refuses scrypt calls whose memory need (128 * N * r * p) exceeds maxmem; size it to
    # fit.
    maxmem = 128 * n * r * (p + 2) + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def hash_password(password: str, *, log2_n: int = SCRYPT_LOG2_N) -> str:
    """A password-file hash of ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password.encode("utf-8"), salt, log2_n, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return f"{_PREFIX}ln={log2_n},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    if not encoded.startswith(_PREFIX):
        raise ValueError("hash does not start with $scrypt$")
    params, salt, key = encoded[len(_PREFIX) :].split("$")
    fields = dict(item.split("=", 1) for item in params.split(","))
    log2_n, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
    if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    return log2_n, r, p, _unb64(salt), _unb64(key)


def verify_password(password: bytes, encoded: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant-time compare)."""
    try:
        log2_n, r, p, salt, key = _parse_hash(encoded)
    except (ValueError, KeyError):
        return False
    candidate = _scrypt(password, salt, log2_n, r, p, len(key))
    return hmac.compare_digest(candidate, key)


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
                f"{path}:{number}: not a 'user:$scrypt$...' line ({err}); "
                "make lines with: python -m kilowatch.broker.auth USER"
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
