"""``kilowatch serve`` / ``deadletters`` / ``energy`` as subprocesses: embedded broker, signals,
persistent sessions, a SIGKILL mid-stream, and port errors."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from svchelpers import Publisher, ServeProcess, forget_session, poll, run_cli, unique

from kilowatch.model.messages import Reading
from kilowatch.mqtt.packets import encode_connect
from kilowatch.store import Batch, DeadLetter, open_store
from kilowatch.testing import MosquittoServer
from kilowatch.testing.tls import self_signed_cert

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z
DAY = ("--from", "2026-01-01", "--to", "2026-01-02")


def stream(device: str, n: int) -> list[tuple[str, Any]]:
    """A PM Mini G3 at a constant 60 W reporting every minute: 1 Wh per message, 60 Wh per hour."""
    out = []
    for k in range(n):
        params = {
            "ts": T0 + 60 * k,
            "pm1:0": {"id": 0, "apower": 60.0, "aenergy": {"total": 100.0 + k}},
        }
        frame = {
            "src": device,
            "dst": f"{device}/events",
            "method": "NotifyStatus",
            "params": params,
        }
        out.append((f"{device}/events/rpc", frame))
    return out


def energy_rows(tmp_path: Path, store: str, *extra: str) -> list[dict[str, Any]]:
    out = run_cli(
        tmp_path,
        "energy",
        "--by",
        "hour",
        "--tz",
        "UTC",
        *DAY,
        "--format",
        "json",
        "--store",
        store,
        *extra,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


async def stored_wh(store_url: str, device: str) -> float:
    from datetime import UTC, datetime

    from kilowatch.query.energy import EnergyQuery

    query = EnergyQuery(
        by="day", tz="UTC", start=datetime(2025, 12, 31, tzinfo=UTC),
        end=datetime(2026, 1, 3, tzinfo=UTC), devices=(device,), group="device",
    )  # fmt: skip
    async with open_store(store_url) as store:
        return sum(r.energy_wh for r in await store.energy(query))


def ready_port(sp: ServeProcess) -> int:
    return int(sp.wait_for_log(r"kilowatch ready .* mqtt=127\.0\.0\.1:(\d+)").group(1))


async def test_serve_with_the_embedded_broker_and_sigterm(
    tmp_path: Path, start_serve: Callable[..., ServeProcess]
) -> None:
    store = f"sqlite:///{tmp_path}/embedded.db"
    sp = start_serve(
        "--broker", "embedded", "--mqtt-port", "0", "--store", store, "--log-format", "json"
    )  # fmt: skip
    port = ready_port(sp)
    device = unique("shellypmminig3-emb")
    pub = Publisher(port)
    try:
        pub.publish_many(stream(device, 121))
        await poll(lambda: stored_wh(store, device), what="energy in the store")
        await poll(lambda: _eq(stored_wh(store, device), 120.0), what="all 120 Wh")
    finally:
        pub.close()
    rows = energy_rows(tmp_path, store, "--device", device)
    assert [(r["start"], r["energy_wh"]) for r in rows] == [
        ("2026-01-01T09:00:00+00:00", 60.0),
        ("2026-01-01T10:00:00+00:00", 60.0),
    ]
    assert sp.terminate() == 0
    lines = [json.loads(line) for line in sp.text().splitlines() if line.startswith("{")]
    assert any(line["msg"].startswith("stopped") for line in lines)
    assert all({"time", "level", "logger", "msg"} <= set(line) for line in lines)


async def _eq(value: Any, expected: float) -> bool:
    return bool(await value == expected)


async def test_messages_published_while_down_arrive_after_restart(
    tmp_path: Path, mosquitto: MosquittoServer, start_serve: Callable[..., ServeProcess]
) -> None:
    store = f"sqlite:///{tmp_path}/session.db"
    client_id = unique("kw-session-")
    args = ("--broker", mosquitto.url, "--store", store, "--mqtt-client-id", client_id)
    device = unique("shellypmminig3-down")
    messages = stream(device, 61)
    pub = Publisher(mosquitto.port)
    try:
        first = start_serve(*args)
        ready_port(first)
        pub.publish_many(messages[:1])
        await poll(lambda: _has_device(store, device), what="the first reading")
        assert first.terminate() == 0
        pub.publish_many(messages[1:])  # kilowatch is down: the broker keeps them for our session
        second = start_serve(*args)
        second.wait_for_log("session=resumed")
        await poll(
            lambda: _eq(stored_wh(store, device), 60.0), what="the hour published while down"
        )
        assert second.terminate() == 0
    finally:
        pub.close()
        forget_session(mosquitto.port, client_id)


async def _has_device(store_url: str, device: str) -> bool:
    async with open_store(store_url) as store:
        return await store.device(device) is not None


async def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
    mosquitto: MosquittoServer,
    start_serve: Callable[..., ServeProcess],
    redis_url: str,
) -> None:
    """Kill -9 while batches are in flight; the restarted kilowatch gets the unacknowledged messages
    again and the ledger's saved state makes them count exactly once (on Redis: no transactions
    across keys to hide behind)."""
    client_id = unique("kw-kill-")
    args = ("--broker", mosquitto.url, "--store", redis_url, "--mqtt-client-id", client_id)
    devices = [unique(f"shellypmminig3-k{i}") for i in range(2)]
    per_device = 5 * 60 + 1  # five hours of minutes
    messages = [
        m for batch in zip(*(stream(d, per_device) for d in devices), strict=True) for m in batch
    ]
    pub = Publisher(mosquitto.port)
    try:
        first = start_serve(*args)
        ready_port(first)
        pub.publish_many(messages[: len(messages) // 2])
        await poll(lambda: stored_wh(redis_url, devices[0]), what="some energy stored")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
        partial = await stored_wh(redis_url, devices[0])
        pub.publish_many(messages[len(messages) // 2 :])
        second = start_serve(*args)
        for d in devices:
            await poll(
                lambda d=d: _eq(stored_wh(redis_url, d), per_device - 1.0), what=f"all of {d}"
            )
        assert second.terminate() == 0
    finally:
        pub.close()
        forget_session(mosquitto.port, client_id)
    assert partial < per_device - 1  # it really was killed mid-stream
    for d in devices:
        assert await hourly_wh(redis_url, d) == [60.0] * 5  # every hour exact: none lost or doubled


async def hourly_wh(store_url: str, device: str) -> list[float]:
    from datetime import UTC, datetime

    from kilowatch.query.energy import EnergyQuery

    query = EnergyQuery(
        by="hour", tz="UTC", start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 1, 2, tzinfo=UTC), devices=(device,), group="device",
    )  # fmt: skip
    async with open_store(store_url) as store:
        return [r.energy_wh for r in await store.energy(query)]


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_cli(
            tmp_path,
            "serve",
            "--mqtt-port",
            str(port),
            "--store",
            f"sqlite:///{tmp_path}/p.db",
            check=False,
        )
    assert out.returncode == 1
    assert f"port {port} is in use" in out.stderr and "--broker mqtt://localhost" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_setting_is_one_clear_line(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "serve", "--tz", "Nowhere/Land", check=False)
    assert out.returncode == 1
    assert "invalid tz = 'Nowhere/Land' (from flag --tz)" in out.stderr
    assert "Traceback" not in out.stderr


async def test_deadletters_lists_what_was_kept(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/dl.db"
    letters = [
        DeadLetter(
            T0 + i, f"tele/pow{i}/SENSOR", b'{"ENERGY": ' + b"x" * 100, "invalid_json", "bad JSON"
        )
        for i in range(3)
    ] + [DeadLetter(T0 + 10, "weird/topic", b"\xff\x00", "unknown_topic", "no decoder")]
    async with open_store(store) as s:
        await s.commit(Batch(dead_letters=letters, latest=[Reading("d", "c", T0)]))
    out = json.loads(
        run_cli(
            tmp_path, "deadletters", "--format", "json", "--limit", "3", "--store", store
        ).stdout
    )
    assert out["counts"] == {"invalid_json": 3, "unknown_topic": 1}  # counts are all-time
    assert [d["topic"] for d in out["dead_letters"]] == [
        "weird/topic",
        "tele/pow2/SENSOR",
        "tele/pow1/SENSOR",
    ]  # newest first, --limit kept
    weird = out["dead_letters"][0]
    assert weird["payload"] == "\\xff\x00" and weird["reason"] == "unknown_topic"
    assert weird["time"] == "2026-01-01T09:00:10+00:00"
    table = run_cli(tmp_path, "deadletters", "--store", store).stdout
    assert "tele/pow0/SENSOR" in table and "invalid_json" in table and "…" in table


def test_every_command_has_help_with_an_example() -> None:
    from typer.testing import CliRunner

    from kilowatch.cli.app import app

    for command in ("serve", "deadletters"):
        out = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert out.exit_code == 0 and f"kilowatch {command}" in out.stdout
        assert "Examples" in out.stdout


MOSQUITTO_PASSWD = Path(__file__).resolve().parents[1] / "broker" / "mosquitto-passwd.txt"
"""Lines made by mosquitto_passwd; ``meter`` has the password ``s3cret``."""


def test_lan_without_credentials_is_refused_in_one_line(tmp_path: Path) -> None:
    out = run_cli(
        tmp_path, "serve", "--broker", "embedded", "--mqtt-host", "0.0.0.0", "--mqtt-port", "0",
        "--http-port", "0",
        "--store", f"sqlite:///{tmp_path}/lan.db", check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: the embedded broker would listen on 0.0.0.0, which other machines can reach, "
        "without credentials; give it users with --mqtt-password-file FILE (lines made by "
        "mosquitto_passwd) or --mqtt-user and --mqtt-password, or bind it to 127.0.0.1 with "
        "--mqtt-host"
    ]


def test_embedded_broker_settings_mistakes_are_one_line(tmp_path: Path) -> None:
    common = ("--broker", "embedded", "--store", f"sqlite:///{tmp_path}/m.db", "--mqtt-port", "0",
              "--http-port", "0")  # fmt: skip
    missing = tmp_path / "missing"
    cases = [
        (("--mqtt-user", "meter"), "mqtt_user is set without mqtt_password"),
        (
            ("--mqtt-tls-key", "k.pem"),
            "invalid mqtt_tls_key = 'k.pem' (from flag --mqtt-tls-key): set mqtt_tls_cert too",
        ),
        (
            ("--mqtt-password-file", str(missing)),
            f"cannot read the broker password file {missing}: No such file",
        ),
        (
            ("--mqtt-tls-cert", str(missing)),
            f"cannot read the embedded broker's TLS certificate or key ({missing}): No such file",
        ),
    ]
    for args, message in cases:
        out = run_cli(tmp_path, "serve", *common, *args, check=False)
        lines = [line for line in out.stderr.splitlines() if line]
        assert out.returncode == 1, args
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), out.stderr


def _tls_publisher(port: int, ca: Path, user: str, password: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("tls-pub-"))
    client.tls_set(ca_certs=str(ca))
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _connack(port: int, **login: Any) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(encode_connect(unique("probe-"), **login))
        return sock.recv(4)[3]


async def test_serve_with_a_mosquitto_password_file_and_tls(
    tmp_path: Path, start_serve: Callable[..., ServeProcess]
) -> None:
    cert, key = self_signed_cert(tmp_path)
    store = f"sqlite:///{tmp_path}/tls.db"
    sp = start_serve(
        "--mqtt-port", "0", "--mqtt-tls-port", "0", "--store", store,
        "--mqtt-password-file", str(MOSQUITTO_PASSWD),
        "--mqtt-tls-cert", str(cert), "--mqtt-tls-key", str(key),
    )  # fmt: skip
    port = ready_port(sp)  # the intake logged in: with a user of its own, not from the file
    tls_port = int(
        sp.wait_for_log(r"listening on mqtt://127\.0\.0\.1:\d+ and mqtts://127\.0\.0\.1:(\d+)")
        .group(1)
    )  # fmt: skip
    assert _connack(port) == 5  # no user: not authorised
    assert _connack(port, username="meter", password=b"wrong") == 4
    device = unique("shellypmminig3-tls")
    pub = _tls_publisher(tls_port, cert, "meter", "s3cret")
    try:
        for topic, frame in stream(device, 61):
            pub.publish(topic, json.dumps(frame), qos=1).wait_for_publish(30)
        await poll(lambda: _eq(stored_wh(store, device), 60.0), what="60 Wh over TLS")
    finally:
        pub.disconnect()
        pub.loop_stop()
    assert sp.terminate() == 0
