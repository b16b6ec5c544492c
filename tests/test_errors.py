"""Error types: config and data errors are user errors, which the CLI reports as one message with exit 2."""

from __future__ import annotations

import pytest

from cli_run import cli

from mt_tune.errors import ConfigError, DataError, UserError


@pytest.mark.parametrize("kind", [ConfigError, DataError])
def test_config_and_data_errors_are_user_errors_with_their_message(kind):
    error = kind("data.train[0]: c.jsonl: no such file")
    assert isinstance(error, UserError) and not isinstance(error, (ValueError, RuntimeError))
    assert str(error) == "data.train[0]: c.jsonl: no such file"
    assert not issubclass(ConfigError, DataError) and not issubclass(DataError, ConfigError)


def test_a_user_error_from_a_command_is_exit_2_with_one_line(tmp_path, capsys):
    # `data check` of a missing file raises a UserError; the CLI turns it into one line and exit 2.
    assert cli("data", "check", str(tmp_path / "none.jsonl")) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'none.jsonl'}: no such file\n"
