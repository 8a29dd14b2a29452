"""Settings: one precedence (flags > KILOWATCH_* env > TOML file > defaults), clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kilowatch.errors import ConfigError
from kilowatch.service.config import (
    env_var,
    flag,
    load_settings,
    parse_broker_url,
    resolve_store_url,
    setting_names,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    conf = write_toml(
        tmp_path / "k.toml", "http_port = 8101\nmqtt_port = 1901\ntz = 'Europe/Sofia'\n"
    )
    env = {"KILOWATCH_HTTP_PORT": "8102", "KILOWATCH_MQTT_PORT": "1902"}
    s = load_settings({"http_port": 8103, "mqtt_port": None}, config_file=conf, env=env)
    assert s.http_port == 8103  # flag beats env and file
    assert s.mqtt_port == 1902  # env beats file (the flag was not given)
    assert s.tz == "Europe/Sofia"  # file beats default
    assert s.http_host == "127.0.0.1"  # default


def test_config_file_from_env_then_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    write_toml(home / ".config/kilowatch/config.toml", "http_port = 8201\n")
    assert load_settings(env={}).http_port == 8201
    other = write_toml(tmp_path / "other.toml", "http_port = 8202\n")
    assert load_settings(env={"KILOWATCH_CONFIG": str(other)}).http_port == 8202
    explicit = write_toml(tmp_path / "explicit.toml", "http_port = 8203\n")
    assert (
        load_settings(config_file=explicit, env={"KILOWATCH_CONFIG": str(other)}).http_port == 8203
    )


def test_defaults_data_dir_and_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = load_settings(env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert s.data_dir == tmp_path / "xdg" / "kilowatch"
    assert s.store_url == f"sqlite:///{tmp_path}/xdg/kilowatch/kilowatch.db"
    s = load_settings(env={})
    assert s.data_dir == tmp_path / "home" / ".local/share/kilowatch"
    assert s.broker == "auto" and s.mqtt_port == 1883 and s.http_port == 8000
    assert s.mqtt_client_id.startswith("kilowatch-")
    assert s.zigbee2mqtt_base_topics == ("zigbee2mqtt",)


@pytest.mark.parametrize(
    ("source", "expected_source"),
    [
        ("env", "environment variable KILOWATCH_HTTP_PORT"),
        ("file", "config file"),
        ("flag", "flag --http-port"),
    ],
)
def test_invalid_value_names_key_value_and_source(
    tmp_path: Path, source: str, expected_source: str
) -> None:
    conf = write_toml(tmp_path / "k.toml", "http_port = 'eighty'\n" if source == "file" else "")
    env = {"KILOWATCH_HTTP_PORT": "eighty"} if source == "env" else {}
    cli = {"http_port": "eighty"} if source == "flag" else {}
    with pytest.raises(ConfigError) as err:
        load_settings(cli, config_file=conf, env=env)
    text = str(err.value)
    assert "http_port" in text and "'eighty'" in text and expected_source in text


def test_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tz = 'Mars/Olympus'.*unknown time zone"):
        load_settings({"tz": "Mars/Olympus"}, env={})
    with pytest.raises(ConfigError, match="broker = 'http://x'"):
        load_settings({"broker": "http://x"}, env={})
    with pytest.raises(ConfigError, match="store = 'postgres://x'"):
        load_settings(env={"KILOWATCH_STORE": "postgres://x"})
    with pytest.raises(ConfigError, match="log_level"):
        load_settings({"log_level": "LOUD"}, env={})
    with pytest.raises(ConfigError, match="mqtt_port"):
        load_settings({"mqtt_port": 70000}, env={})
    with pytest.raises(ConfigError, match="mqtt_password = \\*\\*\\*"):
        load_settings({"mqtt_password": 3}, env={})  # a password is never echoed


def test_unknown_key_and_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'http_prot'"):
        load_settings(config_file=write_toml(tmp_path / "a.toml", "http_prot = 1\n"), env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=write_toml(tmp_path / "b.toml", "http_port = = 1\n"), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", env={})


def test_lists_from_env_and_flags() -> None:
    s = load_settings(env={"KILOWATCH_ZIGBEE2MQTT_BASE_TOPICS": "z2m, zigbee2mqtt/house"})
    assert s.zigbee2mqtt_base_topics == ("z2m", "zigbee2mqtt/house")
    s = load_settings({"log_level": "debug", "log_format": "json"}, env={})
    assert s.log_level.value == "DEBUG" and s.log_format.value == "json"


def test_broker_urls() -> None:
    a = parse_broker_url("mqtts://meter%40home:p%3Ass@broker.example")
    assert (a.host, a.port, a.tls, a.user, a.password) == (
        "broker.example",
        8883,
        True,
        "meter@home",
        "p:ss",
    )
    b = parse_broker_url("mqtt://127.0.0.1:1999")
    assert (b.port, b.tls, b.user) == (1999, False, None)


def test_resolve_store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILOWATCH_STORE", raising=False)
    monkeypatch.delenv("KILOWATCH_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    assert resolve_store_url() == f"sqlite:///{tmp_path}/d/kilowatch/kilowatch.db"
    conf = write_toml(tmp_path / "c.toml", "store = 'redis://127.0.0.1:6379/2'\n")
    assert resolve_store_url(config_file=conf) == "redis://127.0.0.1:6379/2"
    monkeypatch.setenv("KILOWATCH_STORE", "redis://127.0.0.1:6379/3")
    assert resolve_store_url(config_file=conf) == "redis://127.0.0.1:6379/3"
    assert resolve_store_url("sqlite:///x.db", config_file=conf) == "sqlite:///x.db"


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for key in setting_names():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}`")), None)
        assert row is not None, f"docs/configuration.md has no row for {key}"
        assert f"`{env_var(key)}`" in row, f"{key}: env var missing"
        if key not in {"store", "broker"} and key in _flagged():
            assert f"`{flag(key)}`" in row, f"{key}: flag missing"


def _flagged() -> set[str]:
    """Settings that ``kilowatch serve`` has a flag for (read from its source)."""
    src = (Path(__file__).resolve().parents[2] / "src/kilowatch/cli/serve.py").read_text()
    return {f.replace("-", "_") for f in re.findall(r'"--([a-z0-9-]+)', src)}


def test_embedded_broker_tls_and_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    conf = write_toml(
        tmp_path / "k.toml",
        "mqtt_tls_cert = '~/broker.crt'\nmqtt_password_file = '/etc/kilowatch/passwd'\n",
    )
    env = {"KILOWATCH_MQTT_TLS_KEY": "~/broker.key"}
    s = load_settings({"mqtt_tls_port": None}, config_file=conf, env=env)
    assert s.mqtt_tls_cert == tmp_path / "home/broker.crt"  # ~ expanded, as for mqtt_ca
    assert s.mqtt_tls_key == tmp_path / "home/broker.key"
    assert s.mqtt_password_file == Path("/etc/kilowatch/passwd")
    assert (s.mqtt_tls_port, s.embedded_tls_port) == (None, 8883)  # 8883 when a cert is given
    s = load_settings({"mqtt_tls_port": 18883}, config_file=conf, env=env)
    assert s.embedded_tls_port == 18883
    s = load_settings(env={})
    assert (s.mqtt_tls_cert, s.mqtt_password_file, s.embedded_tls_port) == (None, None, None)


def test_tls_key_and_port_need_the_certificate() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"KILOWATCH_MQTT_TLS_KEY": "/k.pem"})
    assert str(err.value) == (
        "invalid mqtt_tls_key = '/k.pem' (from environment variable KILOWATCH_MQTT_TLS_KEY): "
        "set mqtt_tls_cert too (the certificate of the TLS listener)"
    )
    with pytest.raises(ConfigError, match=r"invalid mqtt_tls_port = 8884 \(from flag"):
        load_settings({"mqtt_tls_port": 8884}, env={})
    with pytest.raises(ConfigError, match="mqtt_tls_port"):
        load_settings({"mqtt_tls_cert": "/c.pem", "mqtt_tls_port": 70000}, env={})


def test_the_broker_is_auto_managed_embedded_or_a_url() -> None:
    for value in ("auto", "managed", "embedded"):
        s = load_settings({"broker": value}, env={})
        assert (s.broker_mode, s.own_broker, s.embedded) == (value, True, value == "embedded")
    s = load_settings({"broker": "mqtt://127.0.0.1:1999"}, env={})
    assert (s.broker_mode, s.own_broker, s.embedded) == (None, False, False)
    with pytest.raises(ConfigError, match="a broker is 'auto', 'managed', 'embedded'"):
        load_settings({"broker": "mosquitto"}, env={})
    s = load_settings(env={"KILOWATCH_MOSQUITTO": "~/bin/mosquitto"})
    assert s.mosquitto == Path("~/bin/mosquitto").expanduser()


def test_tls_from_the_local_ca_or_from_files_not_both() -> None:
    s = load_settings({"mqtt_tls_local": True, "mqtt_tls_port": 0}, env={})
    assert (s.mqtt_tls_local, s.embedded_tls_port) == (True, 0)
    assert load_settings({"mqtt_tls_local": True}, env={}).embedded_tls_port == 8883
    with pytest.raises(ConfigError, match="use either mqtt_tls_cert or mqtt_tls_local"):
        load_settings({"mqtt_tls_cert": "/c.pem", "mqtt_tls_local": True}, env={})
    with pytest.raises(ConfigError, match="or mqtt_tls_local"):
        load_settings({"mqtt_tls_port": 8884}, env={})
