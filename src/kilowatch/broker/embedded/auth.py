"""User names and passwords for the embedded broker.

Two sources, usable together: a mapping of user → plain password (what ``--mqtt-user`` /
``--mqtt-password`` give), and a password file of ``user:hash`` lines, one per user. The file is
mosquitto's: lines written by ``mosquitto_passwd`` work as they are, in both of its formats,

    $7$<iterations>$<salt, base64>$<hash, base64>     PBKDF2-HMAC-SHA512 (its default since 2.0)
    $6$<salt, base64>$<hash, base64>                  SHA-512 of password + salt (1.6 and earlier)

and kilowatch adds a memory-hard one, made by :func:`~kilowatch.broker.passwords.scrypt_hash`
(``python -m kilowatch.broker.embedded.auth USER`` prints such a line):

    $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt, base64>$<key, base64>

Blank lines and lines starting with ``#`` are ignored. Checking a hash can take tens of
milliseconds (scrypt, or PBKDF2 with many iterations); :meth:`Authenticator.verify` does it on a
worker thread and remembers successful checks, so a device that reconnects every minute costs one
hash per broker run.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import hmac
import sys
from collections.abc import Mapping
from pathlib import Path

from kilowatch.broker.passwords import parse_hash, scrypt_hash, verify_password
from kilowatch.errors import BrokerError


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
            parse_hash(encoded)
        except (ValueError, KeyError) as err:
            raise BrokerError(
                f"{path}:{number}: not a 'user:hash' line ({err}); make lines with "
                f"'mosquitto_passwd {path} USER' or 'python -m kilowatch.broker.embedded.auth USER'"
            ) from err
        users[user] = encoded
    return users


class Authenticator:
    """Checks CONNECT credentials against plain passwords and password-file hashes.

    ``enabled`` is false when no user is configured: then every client is let in.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        password_file: str | Path | None = None,
        *,
        hashes: Mapping[str, str] | None = None,
    ) -> None:
        self._plain = dict(users or {})
        self._hashed = load_password_file(password_file) if password_file is not None else {}
        # Users with a hash from elsewhere (the store's broker credentials) win over the file's.
        self._hashed.update(hashes or {})
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
    """``python -m kilowatch.broker.embedded.auth USER``: print a password-file line.

    The password is read from a prompt, or from the first line of stdin when it is not a terminal.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or ":" in args[0] or args[0].startswith("-"):
        print(
            "usage: python -m kilowatch.broker.embedded.auth USER"
            "  (reads the password; prints USER:HASH)"
        )
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args[0]}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 1
    print(f"{args[0]}:{scrypt_hash(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
