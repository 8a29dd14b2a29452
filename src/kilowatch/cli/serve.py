"""``kilowatch serve``: run broker, intake, ledger and store (and the web app) until stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from kilowatch.errors import KilowatchError
from kilowatch.service.config import load_settings

HELP = (
    "Run kilowatch: the MQTT broker, the intake, the energy ledger and the store, until SIGINT or "
    "SIGTERM; then commit what is in flight and exit 0 (exit 1 when the store still fails after "
    "stop_timeout_s: what was not stored is not acknowledged, so the broker delivers it again at "
    "the next start).\n\n"
    "The broker (--broker): 'auto' (default) runs and supervises a mosquitto of kilowatch's own "
    "when mosquitto 2.x is installed (apt-get install mosquitto), else the embedded broker, and "
    "says which at start; 'managed' insists on mosquitto, 'embedded' on the built-in broker; a "
    "mqtt:// or mqtts:// URL uses a broker you run. Beyond loopback (--mqtt-host 0.0.0.0) the "
    "managed mosquitto lets in only devices with a user of their own: kilowatch broker user add "
    "DEVICE prints its password.\n\n"
    "Settings come from flags, then KILOWATCH_* environment variables, then the TOML file "
    "(--config, $KILOWATCH_CONFIG or ~/.config/kilowatch/config.toml), then defaults; see "
    "docs/configuration.md.\n\n"
    "Examples:\n\n"
    "kilowatch serve\n\n"
    "kilowatch serve --broker mqtts://kilowatch:secret@broker.example:8883 --mqtt-ca ca.pem "
    "--store redis://localhost:6379/0\n\n"
    "kilowatch serve --mqtt-port 1884 --http-port 8080 --log-level DEBUG --log-format json\n\n"
    "kilowatch serve --mqtt-host 0.0.0.0 --mqtt-tls-local\n\n"
    "kilowatch serve --broker embedded --mqtt-host 0.0.0.0 --mqtt-password-file broker-passwd "
    "--mqtt-tls-cert broker.crt --mqtt-tls-key broker.key"
)


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one KilowatchError inside a TaskGroup's exception group, else the group itself."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                leaves.append(e)

    walk(group)
    errors = [e for e in leaves if isinstance(e, KilowatchError)]
    return errors[0] if errors else group


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command("serve", help=HELP)
    def serve(
        broker: str | None = typer.Option(
            None,
            "--broker",
            help="'auto' (default: managed mosquitto if installed, else embedded), 'managed', "
            "'embedded', or mqtt://user:pass@host:port, mqtts://...",
        ),
        mosquitto: str | None = typer.Option(
            None,
            "--mosquitto",
            help="mosquitto binary (default: PATH, /usr/sbin, /usr/local/sbin).",
        ),
        store: str | None = typer.Option(
            None, "--store", help="Store URL: sqlite:///file.db, redis://host:port/db, rediss://..."
        ),
        data_dir: str | None = typer.Option(
            None, "--data-dir", help="Directory of the default SQLite file."
        ),
        mqtt_host: str | None = typer.Option(
            None, "--mqtt-host", help="Address kilowatch's broker binds (default 127.0.0.1)."
        ),
        mqtt_port: int | None = typer.Option(
            None, "--mqtt-port", help="Port kilowatch's broker binds (default 1883; 0 = any)."
        ),
        mqtt_user: str | None = typer.Option(
            None, "--mqtt-user", help="User the embedded broker requires / for the external one."
        ),
        mqtt_password: str | None = typer.Option(
            None, "--mqtt-password", help="Password of --mqtt-user."
        ),
        mqtt_client_id: str | None = typer.Option(
            None, "--mqtt-client-id", help="Fixed MQTT client id (default kilowatch-<hostname>)."
        ),
        mqtt_ca: str | None = typer.Option(None, "--mqtt-ca", help="CA bundle for mqtts://."),
        mqtt_cert: str | None = typer.Option(
            None, "--mqtt-cert", help="Client certificate for mutual TLS."
        ),
        mqtt_key: str | None = typer.Option(None, "--mqtt-key", help="Key of --mqtt-cert."),
        mqtt_insecure: bool | None = typer.Option(
            None,
            "--mqtt-insecure/--mqtt-verify",
            help="Accept any broker certificate (testing only).",
            show_default=False,
        ),
        mqtt_password_file: str | None = typer.Option(
            None,
            "--mqtt-password-file",
            help="Users of the embedded broker: a mosquitto password file (mosquitto_passwd).",
        ),
        mqtt_tls_cert: str | None = typer.Option(
            None, "--mqtt-tls-cert", help="Certificate (PEM) of the broker's TLS listener."
        ),
        mqtt_tls_local: bool | None = typer.Option(
            None,
            "--mqtt-tls-local/--no-mqtt-tls-local",
            help="A TLS listener on the managed mosquitto, certificate from kilowatch's local CA.",
            show_default=False,
        ),
        mqtt_tls_key: str | None = typer.Option(
            None, "--mqtt-tls-key", help="Private key (PEM) of --mqtt-tls-cert."
        ),
        mqtt_tls_port: int | None = typer.Option(
            None, "--mqtt-tls-port", help="Port of the broker's TLS listener (8883)."
        ),
        shelly_topic_prefixes: str | None = typer.Option(
            None, "--shelly-topic-prefixes", help="Comma-separated Shelly prefix filters ('+')."
        ),
        tasmota_full_topics: str | None = typer.Option(
            None, "--tasmota-full-topics", help="Comma-separated Tasmota FullTopic patterns."
        ),
        zigbee2mqtt_base_topics: str | None = typer.Option(
            None, "--zigbee2mqtt-base-topics", help="Comma-separated Zigbee2MQTT base topics."
        ),
        topic_sources: str | None = typer.Option(
            None,
            "--topic-sources",
            help="Comma-separated FILTER=SOURCE routes: a custom topic layout of a source, e.g. "
            "'site7/+/tele/+=tasmota'.",
        ),
        http_host: str | None = typer.Option(
            None, "--http-host", help="Address the web app binds (default 127.0.0.1)."
        ),
        http_port: int | None = typer.Option(
            None, "--http-port", help="Port the web app binds (default 8000)."
        ),
        tz: str | None = typer.Option(None, "--tz", help="Site time zone (IANA name)."),
        log_level: str | None = typer.Option(
            None, "--log-level", help="DEBUG, INFO (default), WARNING or ERROR."
        ),
        log_format: str | None = typer.Option(
            None, "--log-format", help="'text' (key=value, default) or 'json'."
        ),
        homeassistant: bool | None = typer.Option(
            None,
            "--homeassistant/--no-homeassistant",
            help="Publish Home Assistant MQTT discovery of every meter (default off).",
            show_default=False,
        ),
        config: str | None = typer.Option(None, "--config", help="TOML settings file."),
    ) -> None:
        flags = {k: v for k, v in locals().items() if k != "config"}
        from kilowatch.service.server import run_until_signalled, setup_logging
        from kilowatch.web.app import start_web

        settings = load_settings(flags, config_file=Path(config) if config else None)
        setup_logging(settings)
        try:
            asyncio.run(run_until_signalled(settings, web=start_web))
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        except asyncio.CancelledError:
            raise typer.Exit(130) from None
