"""Issue 13's polling proof, short: 200 polled simulated devices at a 10 s interval.

``bench/polling.py`` is the proof (its ``proof()`` runs here, the same code): 200 unprovisioned
simulated Shellies (MQTT off; PM Mini Gen3, Pro 3EM, Plus 1PM, Pro EM-50 in turn) on their own
loopback addresses (127.0.80.51-250, port 80), ``kilowatch serve`` in this event loop with every
device registered and ``poll = ["*"]`` every 10 simulated seconds. Every channel's energy over
the window must be within 1 Wh of the simulator's truth, nothing estimated, no poll failing.

The bench runs a whole simulated day (24 h at 30x: about 48 minutes, figures in bench/README.md);
here 15 simulated minutes (45 s of polling at 20x, some 18 000 polls) keep the suite fast. The
error of polled energy does not grow with the window: counters are cumulative, so only the
window's two edges can be off, by what flows between a counter's reading and its time stamp.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "polling.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_polling", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_200_polled_devices_within_1_wh_of_the_truth(tmp_path: Path) -> None:
    figures = await _bench().proof(
        devices=200,
        hours=0.25,
        speed=20.0,
        hosts="127.0.80.51-127.0.80.250",
        workdir=tmp_path,
        tolerance=1.0,
    )
    context = str({k: v for k, v in figures.items() if k != "outside"})
    assert figures["channels"] == 400, context  # 50 x (1 + 4 + 1 + 2) channels
    assert figures["outside"] == [], figures["outside"][:20]
    assert figures["worst_diff_wh"] <= 1.0, context
    assert figures["estimated_hours"] == 0, context
    assert figures["failures"] == 0, context
    # every device polled about every 10 simulated seconds over the window (900 s): 90 polls
    assert figures["polls"] >= 200 * 80, context
    assert figures["truth_wh"] > 5000, context  # the loads really ran
