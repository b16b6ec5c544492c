"""CLI-wide behaviour of the real `mt-tune` console script: help, usage errors, exit statuses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from mt_tune.cli import app

# The installed console script next to this interpreter (the virtualenv's bin directory).
MT_TUNE = str(Path(sys.executable).parent / "mt-tune")

# Each command of the CLI contract that reads a file, with that file missing. Only the
# commands that exist are checked; each must fail as bad input (exit 2, one message).
MISSING = "no-such-file.yaml"
MISSING_FILE_ARGS = {
    ("data", "check"): ["data", "check", MISSING],
    ("data", "prepare"): ["data", "prepare", MISSING],
    ("study", "create"): ["study", "create", MISSING],
    ("train",): ["train", MISSING],
    ("translate",): ["translate", MISSING],
    ("evaluate",): ["evaluate", MISSING, "--src", MISSING, "--ref", MISSING],
    ("estimate",): ["estimate", MISSING],
}


def run_cli(*args: str, cwd: Path | None = None, script: list[str] | None = None) -> subprocess.CompletedProcess:
    # A wide, colourless terminal so messages are not wrapped or styled.
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("MT_TUNE_STORAGE", None)
    return subprocess.run([*(script or [MT_TUNE]), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


def command_tree() -> dict[tuple[str, ...], object]:
    """Every command and group of the app by its path, e.g. ("data", "check")."""
    tree: dict[tuple[str, ...], object] = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        tree[path] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return tree


def test_console_script_is_installed():
    assert Path(MT_TUNE).is_file(), f"{MT_TUNE} missing: install the project with pip install -e ."


def test_help_lists_every_command_group_that_exists():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    top_level = [path[0] for path in command_tree() if len(path) == 1]
    assert "data" in top_level
    for name in top_level:
        assert f" {name} " in result.stdout, f"'{name}' missing from mt-tune --help"


def test_no_command_group_is_an_empty_stub():
    # A command that is not built yet is absent from the CLI, not an empty group.
    for path, cmd in command_tree().items():
        if hasattr(cmd, "commands"):  # a group
            assert cmd.commands, f"'mt-tune {' '.join(path)}' is a group without commands"


def test_every_command_has_help():
    # In process (one subprocess per command would take a second each): the help of every
    # command and group renders.
    runner = CliRunner()
    for path in command_tree():
        result = runner.invoke(app, [*path, "--help"], prog_name="mt-tune", env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert result.exit_code == 0, f"mt-tune {' '.join(path)} --help: {result.output}"
        assert f"Usage: mt-tune {' '.join(path)}" in " ".join(result.output.split())


def test_unknown_command_is_a_usage_error():
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "No such command 'no-such-command'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_user_error_prints_one_message_and_exits_2(tmp_path):
    # A command that fails with a ConfigError, run through the same entry point as the script.
    program = textwrap.dedent("""
        from mt_tune import cli
        from mt_tune.errors import ConfigError

        @cli.app.command("fail")
        def fail() -> None:
            raise ConfigError("train.lr: expected a positive number, got -1")

        cli.main()
    """)
    result = run_cli("fail", script=[sys.executable, "-c", program], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: train.lr: expected a positive number, got -1"
    assert result.stdout == ""


def test_runtime_failure_exits_1(tmp_path):
    program = textwrap.dedent("""
        from mt_tune import cli

        @cli.app.command("crash")
        def crash() -> None:
            raise RuntimeError("disk on fire")

        cli.main()
    """)
    result = run_cli("crash", script=[sys.executable, "-c", program], cwd=tmp_path)
    assert result.returncode == 1
    assert "disk on fire" in result.stderr


@pytest.mark.parametrize("path", [p for p in MISSING_FILE_ARGS if p in command_tree()], ids=" ".join)
def test_missing_input_file_is_bad_input_and_writes_nothing(path, tmp_path):
    result = run_cli(*MISSING_FILE_ARGS[path], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ")
    assert MISSING in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == [], "a command that failed on bad input wrote files"
