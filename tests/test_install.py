"""What an install brings: a base install runs everything but the simulator, whose dependencies are
the ``sim`` extra; the lock (constraints.txt) pins every dependency pyproject.toml names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SIM_DEPENDENCIES = ("py_mini_racer", "mini_racer")
"""What a base install lacks of the simulator (aiohttp is base: the fleet's LAN client needs it)."""
INSTALL_HINT = "pip install 'kilowatch[sim]'"

BLOCKER = """\
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {blocked!r}


class Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
"""


def kilowatch(
    tmp_path: Path, *args: str, blocked: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``kilowatch ARGS`` in a fresh interpreter where importing any of ``blocked`` fails, as on a
    machine without them (a ``sitecustomize`` on PYTHONPATH installs the blocking finder)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(blocked)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "src")])}
    return subprocess.run(
        [sys.executable, "-m", "kilowatch", *args],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [["--help"], ["serve", "--help"], ["energy", "--help"], ["demo", "--help"],
     ["simulate", "--help"]],
)  # fmt: skip
def test_help_works_without_the_simulator(tmp_path: Path, args: list[str]) -> None:
    result = kilowatch(tmp_path, *args, blocked=(*SIM_DEPENDENCIES, "shellysim"))
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["demo", "simulate"])
@pytest.mark.parametrize(
    ("blocked", "missing"),
    [(SIM_DEPENDENCIES, r"mini-racer"),  # a base install: shellysim, but not its extra
     ((*SIM_DEPENDENCIES, "shellysim"), r"shellysim"),
     (("aiohttp",), r"aiohttp")],  # a broken install: shellysim still says what is missing
)  # fmt: skip
def test_the_simulator_commands_say_how_to_install_it(
    tmp_path: Path, command: str, blocked: tuple[str, ...], missing: str
) -> None:
    result = kilowatch(tmp_path, command, "--days" if command == "demo" else "--devices", "1",
                       blocked=blocked)  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = _one_line(result)
    assert line.startswith("error: ")
    assert INSTALL_HINT in line
    assert f"bash scripts/run.sh {command}" in line
    assert re.search(rf"\(({missing}) is not installed\)", line), line


def test_a_simulator_error_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    result = kilowatch(tmp_path, "simulate", "--models", "toaster", "--duration", "0")
    assert result.returncode == 1, result.stderr
    assert _one_line(result) == (
        "error: unknown device model 'toaster'; choose from pm1, switch, plug, 3em, em"
    )


def test_the_demo_reports_a_simulator_error_inside_its_task_group() -> None:
    pytest.importorskip("aiohttp")
    from kilowatch.cli.demo import _reportable
    from kilowatch.errors import StoreError
    from shellysim.errors import MqttError

    sim = MqttError("broker refused the device")
    group = BaseExceptionGroup("demo", [ValueError("x"), BaseExceptionGroup("inner", [sim])])
    assert _reportable(group) is sim
    kw = StoreError("store is gone")
    assert _reportable(BaseExceptionGroup("demo", [kw, sim])) is kw
    other = BaseExceptionGroup("demo", [ValueError("x")])
    assert _reportable(other) is other


def test_the_demo_help_shows_the_demos_defaults() -> None:
    pytest.importorskip("aiohttp")
    from kilowatch.cli import demo as cli_demo
    from kilowatch.demo import DemoOptions

    defaults = DemoOptions()
    assert (defaults.days, defaults.speed) == (cli_demo.DEFAULT_DAYS, cli_demo.DEFAULT_SPEED)


# pyproject.toml and the lock


def _requirements(names: list[str]) -> list[Requirement]:
    return [Requirement(r) for r in names]


def _lock_pins() -> dict[str, set[str]]:
    pins: dict[str, set[str]] = defaultdict(set)
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)( ; .+)?", line)
        assert found, f"not an exact pin in {LOCK.name}: {line!r}"
        pins[canonicalize_name(found[1])].add(found[2])
    return pins


def test_a_base_install_brings_no_javascript_engine() -> None:
    """The V8 engine is the simulator's alone; aiohttp is base since the fleet's LAN RPC client
    (aioshelly) needs it, and the sim extra still names it for the simulator's server."""
    base = {canonicalize_name(r.name) for r in _requirements(PYPROJECT["project"]["dependencies"])}
    sim = PYPROJECT["project"]["optional-dependencies"]["sim"]
    assert {canonicalize_name(r.name) for r in _requirements(sim)} == {"aiohttp", "mini-racer"}
    assert base.isdisjoint({"mini-racer", "py-mini-racer"})
    assert {"aioshelly", "aiohttp", "zeroconf"} <= base


def test_pyproject_keeps_ranges() -> None:
    project = PYPROJECT["project"]
    everything = [*project["dependencies"]]
    for names in project["optional-dependencies"].values():
        everything += names
    pinned = [str(r) for r in _requirements(everything) if any(s.operator in ("==", "===")
              for s in r.specifier)]  # fmt: skip
    assert pinned == [], "pin versions in constraints.txt (bash scripts/lock.sh), not here"


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    project = PYPROJECT["project"]
    pins = _lock_pins()
    wrong = []
    for extra, names in [("", project["dependencies"]), *project["optional-dependencies"].items()]:
        for req in _requirements(names):
            name = canonicalize_name(req.name)
            if name == "kilowatch":
                continue  # the test extra asks for kilowatch[sim]
            versions = pins.get(name, set())
            if not versions:
                wrong.append(f"{req} ({extra or 'base'}) is not in {LOCK.name}")
            wrong += [
                f"{LOCK.name} pins {name}=={v}, outside {req} ({extra or 'base'})"
                for v in versions
                if not req.specifier.contains(v, prereleases=True)
            ]
    assert wrong == [], "run: bash scripts/lock.sh\n" + "\n".join(wrong)
