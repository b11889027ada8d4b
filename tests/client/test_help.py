"""`gpb --help` and every command's help are complete: each command says what it does, each
option what it is for, and the top level documents the configuration and the exit codes."""

import re

import click
from click.testing import CliRunner
from gpubroker import cli as gpb


def commands(command: click.Command, path: str = "gpb"):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from commands(sub, f"{path} {name}")


def test_every_command_and_option_has_help():
    missing = []
    for path, command in commands(gpb.cli):
        if not (command.help or "").strip():
            missing.append(path)
        missing += [f"{path} {param.opts[0]}" for param in command.params
                    if isinstance(param, click.Option) and not param.hidden and not param.help]  # fmt: skip
    assert missing == []


def test_the_help_documents_each_exit_code_the_command_line_uses():
    text = CliRunner().invoke(gpb.cli, ["--help"], obj=gpb.State(None, None, False)).output
    codes = {name: value for name, value in vars(gpb).items() if name.startswith("EXIT_")}
    for value in codes.values():
        assert re.search(rf"^ +{value} +\S", text, re.MULTILINE), value
    for name in ("GPUBROKER_API_KEY", "GPUBROKER_URL", "config.toml"):
        assert name in text


def test_each_command_answers_help_without_a_key(config_home):
    for path, _command in commands(gpb.cli):
        result = CliRunner().invoke(gpb.cli, [*path.split()[1:], "--help"], obj=gpb.State(None, None, False))
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: " in result.output
