"""The owner-only secrets file: each device's password and broker password, by reference.

``<data_dir>/fleet/secrets.json``, mode 0600 in a directory of mode 0700, never anywhere else:
the fleet registry in the store holds only the reference (:attr:`Registration.credentials`).
Nothing here logs, prints or ``repr``\\ s a secret.

The file::

    {"version": 1, "secrets": {"<ref>": {"device_password": "…", "broker_password": null}}}

Every write replaces the file whole (a temporary file in the same directory, created 0600,
written, fsynced, renamed over, then the directory fsynced), under an exclusive ``flock`` of
``.secrets.lock`` beside it and a lock per file in this process: writers, in one process or
several, take turns and each sees the last one's work; a reader never sees a torn file.

The methods block on file I/O (a few milliseconds, fsync included): from the event loop, call
them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kilowatch.errors import ConfigError

FILE_MODE = 0o600
DIR_MODE = 0o700
FORMAT_VERSION = 1
LOCK_NAME = ".secrets.lock"
"""The file beside ``secrets.json`` whose ``flock`` serialises writers across processes."""


@dataclass(frozen=True, slots=True)
class DeviceSecrets:
    """A device's secrets; ``repr`` and ``str`` show only which are set."""

    device_password: str | None = None
    """The device's own password (``Shelly.SetAuth``, digest auth as user ``admin``)."""
    broker_password: str | None = None
    """The device's password on kilowatch's MQTT broker."""

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return (
            f"DeviceSecrets(device_password={shown(self.device_password)}, "
            f"broker_password={shown(self.broker_password)})"
        )

    __str__ = __repr__


class SecretBox:
    """The secrets file at ``path`` (:meth:`in_data_dir` for kilowatch's own).

    Raises :class:`ConfigError` when the file or its directory can be read by group or others
    (with the ``chmod`` that fixes it), when the file is not what kilowatch writes, or when it
    cannot be read or written.
    """

    _locks: ClassVar[dict[Path, threading.Lock]] = {}
    _locks_guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._parsed: tuple[bytes, dict[str, DeviceSecrets]] | None = None
        """The file's bytes as last read and what they parsed to: a fleet command reads the
        file once per device it opens, and parsing it whole each time made a run over n
        devices cost n² (500 devices: 3 s of CPU). The bytes are still read every time, so a
        change by any writer, in any process, is seen at once."""

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SecretBox:
        """kilowatch's secrets file: ``<data_dir>/fleet/secrets.json``."""
        return cls(Path(data_dir) / "fleet" / "secrets.json")

    def __repr__(self) -> str:
        return f"SecretBox({str(self.path)!r})"

    __str__ = __repr__

    # -- reads -----------------------------------------------------------------------------------

    def get(self, ref: str) -> DeviceSecrets | None:
        """The secrets kept under ``ref``; ``None`` if there are none (or no file yet)."""
        return self._read().get(_check_ref(ref))

    def refs(self) -> list[str]:
        """Every reference that has secrets, sorted."""
        return sorted(self._read())

    # -- writes ----------------------------------------------------------------------------------

    def put(self, ref: str, secrets: DeviceSecrets) -> None:
        """Keep ``secrets`` under ``ref`` (replacing what was there)."""
        self.put_many({ref: secrets})

    def put_many(self, items: Mapping[str, DeviceSecrets]) -> None:
        """Keep every entry of ``items`` in one atomic write of the file."""
        checked = {_check_ref(ref): _check_secrets(ref, s) for ref, s in items.items()}
        if not checked:
            return
        with self._writing() as current:
            current.update(checked)

    def delete(self, ref: str) -> bool:
        """Forget the secrets under ``ref``; whether there were any."""
        ref = _check_ref(ref)
        with self._writing() as current:
            return current.pop(ref, None) is not None

    # -- the file --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, DeviceSecrets]]:
        """The current entries to change in place, then written back: in turn with every other
        writer of this file, in this process (a lock) and in others (``flock``)."""
        self._ensure_dir()
        with self._lock(), self._flock():
            current = self._read()
            before = dict(current)
            yield current
            if current != before:
                self._write(current)

    def _lock(self) -> threading.Lock:
        key = self.path.absolute()
        with SecretBox._locks_guard:
            return SecretBox._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        lock_path = self.path.parent / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as err:
            raise ConfigError(f"cannot open {lock_path}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _ensure_dir(self) -> None:
        parent = self.path.parent
        try:
            if not parent.is_dir():
                parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                parent.chmod(DIR_MODE)  # exactly 0700, whatever the umask
        except OSError as err:
            raise ConfigError(f"cannot create {parent} for the secrets file: {err}") from err
        _check_mode(parent, DIR_MODE, "directory")

    def _read(self) -> dict[str, DeviceSecrets]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise ConfigError(f"cannot read the secrets file {self.path}: {err.strerror}") from err
        with os.fdopen(fd, "rb") as f:
            # the mode of the file actually opened (a rename cannot slip between check and read)
            _check_mode(self.path, FILE_MODE, "file", os.fstat(f.fileno()))
            _check_mode(self.path.parent, DIR_MODE, "directory")
            raw = f.read()
        parsed = self._parsed
        if parsed is None or parsed[0] != raw:
            parsed = self._parsed = (raw, _parse(self.path, raw))
        return dict(parsed[1])  # the caller's to change (_writing does)

    def _write(self, entries: Mapping[str, DeviceSecrets]) -> None:
        body = {
            "version": FORMAT_VERSION,
            "secrets": {
                ref: {"device_password": s.device_password, "broker_password": s.broker_password}
                for ref, s in sorted(entries.items())
            },
        }
        data = json.dumps(body, indent=1, ensure_ascii=False).encode() + b"\n"
        parent = self.path.parent
        tmp = parent / f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            # created 0600 (the umask can only take bits away), so never readable by others
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:  # left by a crashed writer with our pid: ours to replace
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as err:
            raise ConfigError(f"cannot write the secrets file in {parent}: {err.strerror}") from err
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), FILE_MODE)  # exactly 0600, whatever the umask
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
            _fsync_dir(parent)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ConfigError(f"cannot write the secrets file {self.path}: {err}") from err


def _check_mode(path: Path, wanted: int, what: str, st: os.stat_result | None = None) -> None:
    """:class:`ConfigError` when group or others have any permission on ``path``."""
    if st is None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"the secrets {what} {path} is accessible to group or others (mode {mode:04o}): it "
            f"holds device passwords; run `chmod {wanted:o} {path}` (and check who read it)"
        )


def _fsync_dir(path: Path) -> None:
    """The rename made durable (the directory entry on disk)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(path: Path, raw: bytes) -> dict[str, DeviceSecrets]:
    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"the secrets file {path} is not one kilowatch wrote ({why}); restore it from a "
            "backup, or move it away to start with no stored secrets"
        )

    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad(f"not JSON: {err}") from err
    if not isinstance(body, dict) or not isinstance(body.get("secrets"), dict):
        raise bad('no "secrets" object')
    if body.get("version") != FORMAT_VERSION:
        raise bad(f"format version {body.get('version')!r}, this kilowatch reads {FORMAT_VERSION}")
    out: dict[str, DeviceSecrets] = {}
    for ref, entry in body["secrets"].items():
        if not isinstance(entry, dict):
            raise bad(f"the entry of {ref!r} is not an object")
        values = [entry.get("device_password"), entry.get("broker_password")]
        if not all(v is None or isinstance(v, str) for v in values):
            raise bad(f"a password of {ref!r} is not text")
        out[ref] = DeviceSecrets(*values)
    return out


def _check_ref(ref: object) -> str:
    if not isinstance(ref, str) or not ref or not ref.isprintable():
        raise ConfigError(
            f"invalid secrets reference {ref!r}: use a non-empty printable string (the device id)"
        )
    return ref


def _check_secrets(ref: str, secrets: object) -> DeviceSecrets:
    if not isinstance(secrets, DeviceSecrets):
        raise ConfigError(
            f"secrets of {ref!r} must be a DeviceSecrets, not {type(secrets).__name__}"
        )
    for value in (secrets.device_password, secrets.broker_password):
        if value is not None and not isinstance(value, str):
            # the type only: the value is a secret and never goes into a message
            raise ConfigError(f"a password of {ref!r} is a {type(value).__name__}, not text")
        if value is not None:
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ConfigError(f"a password of {ref!r} cannot be stored as UTF-8") from None
    return secrets


__all__ = ["DeviceSecrets", "SecretBox"]
