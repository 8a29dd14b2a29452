"""Profiles: the shipped example loads, and every mistake is refused with the file, the key and
what is expected."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from kilowatch.errors import FleetError
from kilowatch.fleet.profile import (
    AuthMode,
    DeviceValues,
    Profile,
    fill,
    load_profile,
    parse_profile,
)
from kilowatch.testing.tls import self_signed_cert

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "profiles"
ENV = {"KILOWATCH_MQTT_PASSWORD": "pw", "DEVICE_PW": "device-pw"}


@pytest.fixture
def where(tmp_path: Path) -> Path:
    """A copy of the example's folder, with a fresh CA where the example expects one."""
    folder = tmp_path / "profiles"
    shutil.copytree(EXAMPLE, folder)
    cert, _ = self_signed_cert(tmp_path)
    shutil.copy(cert, folder / "kilowatch-ca.pem")
    (folder / "a.js").write_text("let x = '{{ device.id }}';\n")
    return folder


def parse(where: Path, text: str, env: dict[str, str] | None = None) -> Profile:
    return parse_profile(where / "p.toml", text, env=ENV if env is None else env)


def refused(where: Path, text: str, *needles: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(FleetError) as caught:
        parse(where, text, env)
    message = str(caught.value)
    assert str(where / "p.toml") in message
    for needle in needles:
        assert needle in message, message
    return message


def test_the_example_loads(where: Path) -> None:
    profile = load_profile(where / "home.toml", env=ENV)
    assert profile.select == ("model=S3PM*",)
    assert profile.mqtt is not None and profile.mqtt.server == "192.168.1.20:8883"
    assert profile.mqtt.password == "pw" and "pw" not in repr(profile.mqtt)
    assert profile.mqtt.ssl_ca == "user_ca.pem" and profile.mqtt.use_client_cert is None
    assert profile.system is not None and profile.system.tz == "Europe/Vienna"
    assert profile.auth is not None and profile.auth.mode is AuthMode.GENERATE
    assert [s.name for s in profile.scripts] == ["announce"]
    assert profile.scripts[0].vars == {"site": "home", "topic": "kilowatch/announce"}
    assert profile.tls_material is not None and profile.tls_material.ca is not None
    assert profile.firmware is not None and profile.firmware.minimum == "1.5.1"


def test_the_example_is_documented() -> None:
    """docs/profiles.md shows the example whole, so the two cannot drift."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "profiles.md").read_text()
    assert (EXAMPLE / "home.toml").read_text().strip() in docs


def test_an_empty_profile_manages_nothing(where: Path) -> None:
    profile = parse(where, "")
    assert profile.mqtt is None and profile.system is None and profile.scripts == ()


def test_mqtt_defaults_point_at_the_tls_material(where: Path) -> None:
    profile = parse(where, '[mqtt]\nserver = "h:1"\n[tls]\nca = "kilowatch-ca.pem"\n')
    assert profile.mqtt is not None
    assert profile.mqtt.enable is True and profile.mqtt.ssl_ca == "user_ca.pem"
    plain = parse(where, '[mqtt]\nssl_ca = "none"\nenable = false\n')
    assert plain.mqtt is not None and plain.mqtt.ssl_ca == "none" and not plain.mqtt.enable


def test_unknown_keys_are_refused(where: Path) -> None:
    refused(where, "[mqtt]\nsever = 'h'\n", "unknown key 'mqtt.sever'", "server")
    refused(where, "[colour]\nx = 1\n", "unknown key 'colour'")
    refused(where, "[firmware]\nstage = 'stable'\nchannel = 'x'\n", "firmware.channel")
    refused(
        where,
        '[[scripts]]\nname = "a"\nfile = "a.js"\nautostart = true\n',
        "scripts[0].autostart",
    )


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[mqtt]\nenable = 'yes'\n", ("mqtt.enable must be true or false", "'yes'")),
        ("[mqtt]\nserver = 5\n", ("mqtt.server must be a non-empty string",)),
        ("[mqtt]\nssl_ca = 'mine.pem'\n", ("mqtt.ssl_ca must be one of",)),
        ("[mqtt]\ntopic_prefix = 'a/#'\n", ("mqtt.topic_prefix",)),
        ("[mqtt]\npassword = 'x'\n", ("mqtt.password", "password_env")),
        ("[mqtt]\npassword_env = 'NOPE_UNSET'\n", ("NOPE_UNSET", "not set")),
        ("[mqtt]\nssl_ca = 'user_ca.pem'\n", ("[tls] ca",)),
        ("[mqtt]\nuse_client_cert = true\n", ("[tls] cert and key",)),
        ("[system]\nname = '{{ device.colour }}'\n", ("system.name", "device.colour")),
        ("[system]\ndebug_mqtt = 1\n", ("system.debug_mqtt must be true or false",)),
        ("[auth]\npassword = 'hunter2'\n", ('auth.password may only be "generate"',)),
        ("[auth]\n", ("exactly one of",)),
        ("[auth]\npassword = 'generate'\npassword_env = 'DEVICE_PW'\n", ("exactly one of",)),
        ("[firmware]\nminimum = '1.5'\n", ("firmware.minimum must be a version",)),
        ("[firmware]\nstage = 'nightly'\n", ('"stable" or "beta"',)),
        ("[firmware]\n", ("exactly one of",)),
        ("[tls]\nca = 'missing.pem'\n", ("tls.ca: no such file",)),
        ("[tls]\ncert = 'kilowatch-ca.pem'\n", ("cert and key together",)),
        ("[select]\nmatch = 'room=x'\n", ("select.match must be a list",)),
        ("mqtt = 3\n", ("mqtt must be a table",)),
        ("scripts = 3\n", ("[[scripts]]",)),
        ("[[scripts]]\nfile = 'a.js'\n", ("scripts[0].name must be a non-empty string",)),
        ("[[scripts]]\nname = 'a'\nfile = 'b.js'\n", ("scripts[0].file: no such file",)),
        (
            "[[scripts]]\nname = 'a'\nfile = 'a.js'\n[[scripts]]\nname = 'a'\nfile = 'a.js'\n",
            ("scripts[1].name must be unique",),
        ),
        (
            "[[scripts]]\nname = 'a'\nfile = 'a.js'\n[scripts.vars]\nx = true\n",
            ("scripts[0].vars.x must be a string or a number",),
        ),
        ("[mqtt\n", ("not valid TOML",)),
    ],
)
def test_mistakes_are_refused_clearly(where: Path, text: str, needles: tuple[str, ...]) -> None:
    refused(where, text, *needles)


def test_script_placeholders_must_be_known(where: Path) -> None:
    (where / "b.js").write_text("let s = '{{ vars.site }}'; let t = '{{ vars.nope }}';\n")
    message = refused(
        where,
        "[[scripts]]\nname = 'b'\nfile = 'b.js'\n[scripts.vars]\nsite = 'home'\n",
        "scripts[0].file (b.js)",
        "{{ vars.nope }}",
    )
    assert "{{ vars.site }}" in message  # listed among the known ones


def test_a_bad_certificate_is_refused_when_loading(where: Path) -> None:
    (where / "bad.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(FleetError):
        parse(where, "[tls]\nca = 'bad.pem'\n")


def test_a_missing_profile_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match=re.escape(str(tmp_path / "none.toml"))):
        load_profile(tmp_path / "none.toml")


def test_fill_uses_the_device_values() -> None:
    device = DeviceValues(id="shellypmminig3-aa", mac="AA", name="Boiler", room=None)
    assert fill("{{device.name}}@{{ device.mac }}", device) == "Boiler@AA"
    assert fill("{{ vars.x }}", device, {"x": "1"}) == "1"
    with pytest.raises(FleetError, match="has no room"):
        fill("{{ device.room }}", device)


def test_a_profile_names_the_shipped_metering_script(where: Path) -> None:
    from kilowatch.fleet.scripts import read_script

    profile = parse(where, "[[scripts]]\nname = 'kilowatch'\nfile = 'kilowatch:hourly_energy.js'\n")
    assert profile.scripts[0].code == read_script("hourly_energy.js")
    refused(
        where,
        "[[scripts]]\nname = 'k'\nfile = 'kilowatch:nope.js'\n",
        "scripts[0].file",
        "kilowatch:hourly_energy.js",
    )
