"""The owner-only secrets file: modes, atomic writes, concurrency, refusals, no secret shown."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilowatch.errors import ConfigError
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox

PW = "s3cret-Device-pw"
BROKER = "br0ker-pw-xyz"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The loosest umask: the file's mode must not come from it."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_round_trip_in_the_data_dir(tmp_path: Path, open_umask: None) -> None:
    box = SecretBox.in_data_dir(tmp_path / "data")
    assert box.path == tmp_path / "data" / "fleet" / "secrets.json"
    assert box.get("dev-a") is None  # no file yet
    box.put("dev-a", DeviceSecrets(device_password=PW))
    box.put_many({"dev-b": DeviceSecrets(None, BROKER), "dev-c": DeviceSecrets(PW, BROKER)})
    assert box.get("dev-a") == DeviceSecrets(PW, None)
    assert box.get("dev-b") == DeviceSecrets(None, BROKER)
    assert box.refs() == ["dev-a", "dev-b", "dev-c"]
    box.put("dev-a", DeviceSecrets(None, BROKER))  # replaced whole
    assert box.get("dev-a") == DeviceSecrets(None, BROKER)
    assert box.delete("dev-a") is True
    assert box.delete("dev-a") is False
    assert box.get("dev-a") is None
    # another object on the same file reads what was written
    assert SecretBox(box.path).get("dev-c") == DeviceSecrets(PW, BROKER)
    assert mode(box.path) == 0o600
    assert mode(box.path.parent) == 0o700
    body = json.loads(box.path.read_text())
    assert body["version"] == 1
    assert body["secrets"]["dev-c"] == {"device_password": PW, "broker_password": BROKER}


def test_the_file_is_never_readable_by_others_not_even_before_the_rename(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_replace = Path.replace

    def watching_replace(self: Path, target: Path) -> Path:
        seen.append(stat.S_IMODE(self.stat().st_mode))  # the temporary file, complete
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", watching_replace)
    box = SecretBox.in_data_dir(tmp_path)
    box.put("dev", DeviceSecrets(PW, BROKER))
    box.put("dev2", DeviceSecrets(PW, None))
    assert seen == [0o600, 0o600]
    assert mode(box.path) == 0o600
    # no temporary file is left behind
    assert sorted(p.name for p in box.path.parent.iterdir()) == [".secrets.lock", "secrets.json"]
    assert mode(box.path.parent / ".secrets.lock") == 0o600


def test_repr_and_str_never_show_a_secret(tmp_path: Path) -> None:
    s = DeviceSecrets(PW, BROKER)
    box = SecretBox.in_data_dir(tmp_path)
    box.put("dev", s)
    for text in (repr(s), str(s), f"{s}", repr(box), str(box), repr(box.get("dev"))):
        assert PW not in text and BROKER not in text
    assert repr(s) == "DeviceSecrets(device_password='***', broker_password='***')"
    assert repr(DeviceSecrets(None, BROKER)) == (
        "DeviceSecrets(device_password=None, broker_password='***')"
    )
    assert str(tmp_path) in repr(box)


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o660, 0o644])
def test_a_file_others_can_read_is_refused_with_the_chmod(tmp_path: Path, loose: int) -> None:
    box = SecretBox.in_data_dir(tmp_path)
    box.put("dev", DeviceSecrets(PW, None))
    box.path.chmod(loose)
    with pytest.raises(ConfigError, match=r"chmod 600 .*secrets\.json") as caught:
        box.get("dev")
    assert f"{loose:04o}" in str(caught.value)
    assert PW not in str(caught.value)
    with pytest.raises(ConfigError, match="chmod 600"):
        box.put("dev2", DeviceSecrets(PW, None))  # a write reads first: refused too
    box.path.chmod(0o600)
    assert box.get("dev") == DeviceSecrets(PW, None)
    assert box.get("dev2") is None


def test_a_directory_others_can_enter_is_refused(tmp_path: Path) -> None:
    box = SecretBox.in_data_dir(tmp_path)
    box.put("dev", DeviceSecrets(PW, None))
    box.path.parent.chmod(0o755)
    with pytest.raises(ConfigError, match=r"chmod 700 .*fleet"):
        box.get("dev")
    box.path.parent.chmod(0o700)
    assert box.get("dev") is not None


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "secrets"),
        (b'{"version": 9, "secrets": {}}', "format version 9"),
        (b'{"version": 1, "secrets": {"d": {"device_password": 5}}}', "not text"),
    ],
)
def test_a_file_kilowatch_did_not_write_is_refused(
    tmp_path: Path, content: bytes, why: str
) -> None:
    box = SecretBox.in_data_dir(tmp_path)
    box.put("dev", DeviceSecrets(PW, None))
    box.path.write_bytes(content)
    with pytest.raises(ConfigError, match=why):
        box.get("dev")


@pytest.mark.parametrize("ref", ["", "line\nbreak", 5])
def test_bad_references_are_refused(tmp_path: Path, ref: object) -> None:
    box = SecretBox.in_data_dir(tmp_path)
    with pytest.raises(ConfigError, match="reference"):
        box.put(ref, DeviceSecrets(PW, None))  # type: ignore[arg-type]
    assert not box.path.exists()


def test_a_password_that_is_not_text_is_refused_without_showing_it(tmp_path: Path) -> None:
    box = SecretBox.in_data_dir(tmp_path)
    with pytest.raises(ConfigError, match="not text") as caught:
        box.put_many({"a": DeviceSecrets(PW, None), "b": DeviceSecrets(12345678, None)})  # type: ignore[arg-type]
    assert "12345678" not in str(caught.value)
    assert box.get("a") is None  # nothing of the call was written
    with pytest.raises(ConfigError, match="UTF-8") as caught:
        box.put("c", DeviceSecrets("pw\udc80secret", None))
    assert "secret" not in str(caught.value).replace("secrets", "")


def test_threads_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = SecretBox.in_data_dir(tmp_path).path

    def writer(n: int) -> None:
        box = SecretBox(path)  # each thread its own object: the lock is per file
        for i in range(20):
            box.put(f"dev-{n}-{i}", DeviceSecrets(f"pw-{n}-{i}", None))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    box = SecretBox(path)
    assert len(box.refs()) == 120
    assert box.get("dev-5-19") == DeviceSecrets("pw-5-19", None)


WRITER = """
import sys
from pathlib import Path
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
box, n = SecretBox(Path(sys.argv[1])), sys.argv[2]
for i in range(int(sys.argv[3])):
    box.put(f"p{n}-{i}", DeviceSecrets(f"pw{n}-{i}", f"b{n}-{i}"))
"""
READER = """
import sys
from pathlib import Path
from kilowatch.fleet.secrets import SecretBox
box, stop, reads = SecretBox(Path(sys.argv[1])), Path(sys.argv[2]), 0
while not stop.exists():
    box.refs()  # ConfigError (exit 1) on a torn, unparsable file
    reads += 1
print(reads)
"""


def test_processes_take_turns_and_a_reader_never_sees_a_torn_file(tmp_path: Path) -> None:
    box = SecretBox.in_data_dir(tmp_path)
    box.put("seed", DeviceSecrets(PW, None))
    stop = tmp_path / "stop"
    python = sys.executable
    reader = subprocess.Popen(
        [python, "-c", READER, str(box.path), str(stop)], stdout=subprocess.PIPE, text=True
    )
    writers = [
        subprocess.Popen([python, "-c", WRITER, str(box.path), str(n), "25"]) for n in range(3)
    ]
    try:
        assert [w.wait(60) for w in writers] == [0, 0, 0]
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0  # an exception in the reader (a torn file) makes it 1
    assert int(out) > 0
    # flock: no write of another process was lost
    assert len(box.refs()) == 1 + 3 * 25
    assert box.get("p2-24") == DeviceSecrets("pw2-24", "b2-24")
