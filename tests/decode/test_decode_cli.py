"""``kilowatch decode``: JSON lines out, one clear error line and exit code 1 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kilowatch.cli.app import app

SRC = Path(__file__).resolve().parents[2] / "src"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "kilowatch", "decode", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_subprocess_prints_the_brief_reading_from_a_file():
    result = run_cli(str(FIXTURES / "shelly/pm_mini_g3/NotifyStatus.json"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        '{"kind":"reading","device":"shellypmminig3-ecda3bc4ddb0","channel":"pm1:0",'
        '"ts":1752840144.0,"power_w":4.4,"voltage_v":229.8,"current_a":0.046,'
        '"frequency_hz":50.1,"energy_wh":42291.09,"returned_energy_wh":0.0}'
    ]


def test_subprocess_bad_input_is_one_line_and_exit_1():
    result = run_cli("--topic", "tele/pow/SENSOR", "-", stdin=b"{not json\n")
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: invalid_json: ")


runner = CliRunner()


def invoke(*args: str, stdin: bytes | None = None):
    return runner.invoke(app, ["decode", *args], input=stdin)


def lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines()]


def test_stdin_with_topic_and_received_at():
    result = invoke(
        "--topic", "shellies/plug/relay/0/energy", "--received-at", "1700000000", stdin=b"120\n"
    )
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        {
            "kind": "reading",
            "device": "plug",
            "channel": "relay/0",
            "ts": 1700000000.0,
            "energy_wh": 2.0,
        }
    ]


def test_hourly_without_topic_is_guessed():
    result = invoke(str(FIXTURES / "hourly/pm_mini_g3/status.json"), "--received-at", "5")
    assert result.exit_code == 0, result.output
    assert [m["kind"] for m in lines(result.stdout)] == ["interval", "device_info"]


def test_source_and_device_build_the_topic():
    result = invoke(
        "--source", "tasmota", "--device", "pow-r2", str(FIXTURES / "tasmota/pow_r2/SENSOR.json")
    )
    assert result.exit_code == 0, result.output
    [reading] = lines(result.stdout)
    assert (reading["device"], reading["channel"], reading["energy_wh"]) == (
        "pow-r2",
        "ENERGY",
        14834.0,
    )


def test_an_ignored_topic_prints_nothing():
    result = invoke("--topic", "zigbee2mqtt/bridge/state", stdin=b'{"state":"online"}')
    assert result.exit_code == 0
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "stdin", "reason"),
    [
        ((), b"true", "missing_topic"),
        ((), b'{"ENERGY":{"Total":1}}', "missing_topic"),
        (("--topic", "nowhere/known"), b"1", "unknown_topic"),
        (("--source", "gen9", "--topic", "a/online"), b"true", "unknown_source"),
        (
            ("--topic", "/system/x/status"),
            b'{"hourly_energy_usage":1,"timestamp":5}',
            "invalid_payload",
        ),
    ],
)
def test_errors_name_their_reason(args, stdin, reason):
    result = invoke(*args, stdin=stdin)
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {reason}: ")


def test_missing_file():
    result = invoke("/nonexistent/payload.json")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: cannot read /nonexistent/payload.json")


def test_help_has_an_example():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "kilowatch decode --topic" in result.stdout


def test_named_source_reads_a_custom_full_topic():
    result = invoke(
        "--source",
        "tasmota",
        "--topic",
        "home/pow-r2/tele/SENSOR",
        "--received-at",
        "1700000000",
        str(FIXTURES / "tasmota/pow_r2/SENSOR.json"),
    )
    assert result.exit_code == 0, result.output
    [reading] = lines(result.output)
    assert (reading["device"], reading["channel"], reading["energy_wh"]) == (
        "home/pow-r2",
        "ENERGY",
        14834.0,
    )
    # without --source the topic is not one of a configured layout
    result = invoke(
        "--topic", "home/pow-r2/tele/SENSOR", str(FIXTURES / "tasmota/pow_r2/SENSOR.json")
    )
    assert result.exit_code == 1
    assert "unknown_topic" in result.output and "--source" in result.output
