"""``bench/faults.py`` still runs: a quick pass through two of its faults, so the bench cannot rot.

The bench is issue 9's long proof (every fault, ~10 minutes; bench/README.md has its figures):
here ``--quick`` (a faster clock, short faults, 10 devices) restarts mosquitto under an
in-process kilowatch and kills a ``kilowatch serve`` subprocess with SIGKILL, and the figures it
prints must meet its goal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "faults.py"
FAULTS = ("mosquitto", "kill")


@pytest.mark.slow
def test_the_fault_bench_runs_and_meets_its_goal() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILOWATCH_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--faults", ",".join(FAULTS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert set(summary["faults"]) == set(FAULTS)
    for name, figures in summary["faults"].items():
        context = f"{name}: {json.dumps(figures)}"
        assert figures["days"] >= 1 and figures["channels"] > 0, context
        assert figures["worst_wh"] <= summary["goal_wh"], context
        assert figures["plugs_worst_wh"] <= summary["goal_wh"], context
        assert all(rise > 0 for rise in figures["plugs_rise_wh"].values()), context
        assert figures["kept_running"] and figures["caught_up"], context
    assert summary["faults"]["kill"]["kill_exit_codes"] == [-9]
    assert summary["faults"]["mosquitto"]["persistence_file_bytes"] > 0
