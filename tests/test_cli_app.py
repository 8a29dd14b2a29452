"""The command line imports only the command it runs (start-up time), and help still lists all."""

from __future__ import annotations

from kilowatch.cli.app import COMMAND_MODULES, build_app, commands_for


def test_a_command_imports_only_its_own_module() -> None:
    assert commands_for(["energy", "--by", "day"]) == ("energy",)
    assert commands_for(["--version"]) == ()


def test_help_and_unknown_commands_get_every_command() -> None:
    assert commands_for([]) == COMMAND_MODULES
    assert commands_for(["--help"]) == COMMAND_MODULES
    assert commands_for(["no-such-command"]) == COMMAND_MODULES


def test_every_module_registers_the_command_named_after_it() -> None:
    for name in COMMAND_MODULES:
        app = build_app((name,))
        names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
        assert names == {name}, name
