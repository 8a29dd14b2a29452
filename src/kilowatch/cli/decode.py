"""``kilowatch decode``: show what kilowatch makes of one MQTT message, as JSON lines."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson
import typer

from kilowatch.decode.registry import AUTO, DecoderRegistry, default_registry
from kilowatch.decode.state import DecoderState
from kilowatch.errors import DecodeError, KilowatchError

SOURCES = ("auto", "shelly", "shelly-gen1", "tasmota", "zigbee2mqtt", "hourly")

HELP = (
    "Print what kilowatch makes of one MQTT message, one JSON object per line.\n\n"
    "The payload is read from FILE, or from standard input when FILE is - or missing. Without "
    "--topic the topic is guessed from the payload where it names its device (a Shelly RPC frame "
    'has "src", an hourly script message has "id"); otherwise pass --topic, or --device for the '
    "device part. Naming a --source also reads that source's custom topic layouts (a Tasmota "
    "FullTopic such as home/%topic%/%prefix%/, a Zigbee2MQTT base topic) that auto-detection, "
    "which knows only the configured layouts, leaves alone.\n\n"
    "Examples:\n\n"
    "kilowatch decode --topic shellypmminig3-ecda3bc4ddb0/events/rpc notify.json\n\n"
    "echo 1016197 | kilowatch decode --topic shellies/shellyplug-s-C18B12/relay/0/energy\n\n"
    "kilowatch decode --source tasmota --device pow-r2 sensor.json\n\n"
    "kilowatch decode --source tasmota --topic home/pow-r2/tele/SENSOR sensor.json"
)


def decode_payload(
    payload: bytes,
    *,
    topic: str | None,
    source: str,
    device: str | None,
    received_at: float,
    registry: DecoderRegistry | None = None,
) -> list[bytes]:
    """The JSON lines ``kilowatch decode`` prints for one payload (raises ``DecodeError``)."""
    registry = registry or default_registry()
    if topic is None:
        topic = registry.guess_topic(payload, source=source, device=device)
    messages = registry.decode(
        topic,
        payload,
        received_at=received_at,
        state=DecoderState(),
        source=source,
        device=device,
    )
    return [orjson.dumps(message.to_json()) for message in messages]


def _read(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as err:
        raise KilowatchError(f"cannot read {file}: {err.strerror or err}") from err


def register(app: typer.Typer) -> None:
    """Add the ``decode`` command to ``app``."""

    @app.command("decode", help=HELP)
    def decode(
        file: str = typer.Argument("-", metavar="[FILE|-]", help="Payload file; - for stdin."),
        topic: str | None = typer.Option(
            None, "--topic", help="MQTT topic the payload was published on."
        ),
        source: str = typer.Option(
            AUTO,
            "--source",
            help=f"Decoder to use: {', '.join(SOURCES)} (auto picks one by topic; a named one "
            "also reads its custom topic layouts).",
        ),
        device: str | None = typer.Option(
            None,
            "--device",
            help="Device id: replaces the device of every message, and builds the topic when "
            "--topic is not given.",
        ),
        received_at: float | None = typer.Option(
            None,
            "--received-at",
            help="Unix time the message arrived (stamps payloads without a time); default now.",
        ),
    ) -> None:
        try:
            # Trailing newlines come from files and `echo`; no payload we decode ends with one.
            payload = _read(file).rstrip(b"\r\n")
            lines = decode_payload(
                payload,
                topic=topic,
                source=source,
                device=device,
                received_at=time.time() if received_at is None else received_at,
            )
        except DecodeError as err:
            typer.echo(f"error: {err.reason}: {err}", err=True)
            raise typer.Exit(1) from err
        except KilowatchError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from err
        out = sys.stdout.buffer
        for line in lines:
            out.write(line + b"\n")
        out.flush()
