"""Commands that only read refuse a SQLite store that is not there, and create nothing; commands
that write still create it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kilowatch.cli.stores import MAX_LISTED_DEVICES, check_devices
from kilowatch.errors import ConfigError

Run = Callable[..., subprocess.CompletedProcess[str]]
"""The ``kilowatch`` fixture (conftest.py)."""
SRC = str(Path(__file__).resolve().parents[2] / "src")

READERS = [
    ["energy"],
    ["energy", "--by", "day", "--tz", "UTC"],
    ["devices"],
    ["deadletters"],
    ["token", "list"],
    ["token", "revoke", "3f2a9c01d4e5"],
    ["user", "list"],
]


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_reading_commands_refuse_a_missing_store_and_create_nothing(
    command: list[str], tmp_path: Path, kilowatch: Run
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    done = kilowatch(*command, "--store", f"sqlite:///{missing}")
    assert done.returncode == 1
    assert done.stderr == (
        f"error: no store at {missing}: the file does not exist (store URL sqlite:///{missing}); "
        "check --store and KILOWATCH_STORE, or run kilowatch serve first to create it\n"
    )
    assert not missing.exists()
    assert not (tmp_path / "no").exists(), "not even the directory"


def test_the_store_named_by_the_environment_is_checked_too(tmp_path: Path, kilowatch: Run) -> None:
    missing = tmp_path / "typo" / "kw.db"
    done = kilowatch("devices", env={"KILOWATCH_STORE": f"sqlite:///{missing}"})
    assert done.returncode == 1 and str(missing) in done.stderr
    assert not (tmp_path / "typo").exists()


def test_the_default_store_is_looked_for_in_the_data_dir(tmp_path: Path, kilowatch: Run) -> None:
    data = tmp_path / "data"
    done = kilowatch("devices", "--format", "json", env={"KILOWATCH_DATA_DIR": str(data)})
    assert done.returncode == 1
    assert f"no store at {data / 'kilowatch.db'}" in done.stderr
    assert not data.exists()


def test_a_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, kilowatch: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = kilowatch("user", "list", "--store", "sqlite:///sub/kw.db")
    assert done.returncode == 1 and "no store at sub/kw.db" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_writing_commands_still_create_the_store(tmp_path: Path, kilowatch: Run) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'kw.db'}"
    added = kilowatch("user", "add", "bob", "--generate", "--store", url)
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "new" / "dir" / "kw.db").is_file()
    listed = kilowatch("user", "list", "--store", url)
    assert listed.returncode == 0 and listed.stdout.startswith("bob\tadmin\t")
    assert kilowatch("devices", "--format", "json", "--store", url).stdout.strip() == "[]"


def test_the_real_command_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    done = subprocess.run(
        [sys.executable, "-m", "kilowatch", "energy", "--store", f"sqlite:///{missing}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC, "KILOWATCH_STORE": "", "KILOWATCH_CONFIG": ""},
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"error: no store at {missing}: ")
    assert not (tmp_path / "no").exists()


def test_an_unknown_device_names_the_few_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        check_devices(["plug-b", "nope", "plug-a"], {"plug-b", "plug-a", "meter"})
    assert str(err.value) == "unknown --device 'nope'; the store knows: meter, plug-a, plug-b"


def test_an_unknown_device_among_many_points_to_kilowatch_devices() -> None:
    known = {f"plug-{i:02}" for i in range(MAX_LISTED_DEVICES + 1)}
    with pytest.raises(ConfigError) as err:
        check_devices(["nope", "also-nope"], known)
    assert str(err.value) == (
        "unknown --device 'nope', 'also-nope': not among the store's 21 devices; "
        "kilowatch devices lists them"
    )
    check_devices(sorted(known), known)  # all known: no error


def test_an_unknown_device_in_an_empty_store() -> None:
    with pytest.raises(ConfigError, match="the store has no devices yet"):
        check_devices(["nope"], set())
