"""Storage URLs: which one is used, the form that is opened, the password never shown."""

from __future__ import annotations

import pytest

from mt_tune.errors import UserError
from mt_tune.search import urls


@pytest.fixture(autouse=True)
def _no_storage_in_environment(monkeypatch):
    monkeypatch.delenv(urls.ENV_VAR, raising=False)


def test_resolution_order_flag_then_environment_then_embedded_default(monkeypatch):
    assert urls.resolve_url() == "sqlite:///mt-tune.db"
    monkeypatch.setenv(urls.ENV_VAR, "postgresql+psycopg://env@db/x")
    assert urls.resolve_url() == "postgresql+psycopg://env@db/x"
    assert urls.resolve_url("sqlite:///flag.db") == "sqlite:///flag.db"


@pytest.mark.parametrize("url, masked", [
    ("postgresql+psycopg://u:secret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("postgresql://u:p@ss:w/rd@h/db", "postgresql://u:***@h/db"),  # "@", ":" and "/" in the password
    ("postgresql://h/db?user=u&password=secret&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
    ("postgresql+psycopg://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
    ("sqlite:///mt-tune.db", "sqlite:///mt-tune.db"),
])
def test_mask_url_hides_every_form_of_password(url, masked):
    assert urls.mask_url(url) == masked


def test_postgresql_urls_use_psycopg_3():
    assert urls.normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert urls.normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize("url, message", [
    ("mt-tune.db", "is not a URL; expected one of: sqlite:///"),
    ("mysql://u:hunter2@h/db", "unknown scheme 'mysql'; expected one of"),
    ("postgresql+psycopg2://u@h/db", r"unknown scheme 'postgresql\+psycopg2'"),
    ("postgresql://u:hunter2@h:port/db", "cannot be parsed"),
    ("sqlite://", "names no file"),
])
def test_bad_urls_are_user_errors_that_name_the_url_masked(url, message):
    with pytest.raises(UserError, match=message) as err:
        urls.normalize_url(url)
    assert "hunter2" not in str(err.value)


def test_scrub_removes_the_password_a_driver_echoes():
    url = "postgresql+psycopg://u:hunter2@h/db"
    assert urls.scrub('connection to "h" failed for u:hunter2', url) == 'connection to "h" failed for u:***'
    assert urls.scrub("no password here", "sqlite:///x.db") == "no password here"
    assert urls.scrub("unparsable", "not a url") == "unparsable"
