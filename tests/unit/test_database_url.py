"""POSTROOM_DATABASE_URL: the usual forms mean psycopg2; other drivers fail in one line."""

from __future__ import annotations

import sys

import pytest

from postroom.config import ConfigError, load_settings, normalise_database_url
from postroom.store.db import make_engine


@pytest.mark.parametrize("raw", [
    "postgresql://u:p@db:5432/postroom",
    "postgres://u:p@db:5432/postroom",
    "postgresql+psycopg2://u:p@db:5432/postroom",
    "PostgreSQL://u:p@db:5432/postroom",
])
def test_every_postgres_form_means_the_psycopg2_driver(raw):
    assert normalise_database_url(raw) == "postgresql+psycopg2://u:p@db:5432/postroom"


def test_settings_hold_the_normalised_url():
    settings = load_settings({"POSTROOM_DATABASE_URL": "postgres://u@db/postroom"})
    assert settings.database_url == "postgresql+psycopg2://u@db/postroom"


@pytest.mark.parametrize("raw", [
    "postgresql+asyncpg://u@db/postroom",
    "postgresql+psycopg://u@db/postroom",
    "postgres+pg8000://u@db/postroom",
])
def test_a_driver_we_do_not_ship_is_a_one_line_config_error(raw):
    with pytest.raises(ConfigError) as info:
        load_settings({"POSTROOM_DATABASE_URL": raw})
    message = str(info.value)
    assert message.startswith("POSTROOM_DATABASE_URL=(secret): driver ")
    assert "postgresql://" in message and "\n" not in message


@pytest.mark.parametrize("raw", ["mysql://u@db/x", "db.example:5432", "sqlite:///x.db"])
def test_a_url_that_is_not_postgresql_is_refused(raw):
    with pytest.raises(ConfigError, match=r"^POSTROOM_DATABASE_URL=\(secret\): must be a URL"):
        load_settings({"POSTROOM_DATABASE_URL": raw})


def test_make_engine_takes_the_plain_forms_with_psycopg2():
    for raw in ("postgresql://u@127.0.0.1/x", "postgres://u@127.0.0.1/x"):
        engine = make_engine(raw)
        try:
            assert engine.dialect.driver == "psycopg2"
        finally:
            engine.dispose()


def test_make_engine_refuses_other_drivers_naming_the_variable():
    with pytest.raises(ConfigError, match=r"^POSTROOM_DATABASE_URL: driver 'asyncpg'"):
        make_engine("postgresql+asyncpg://u@127.0.0.1/x")


def test_a_missing_psycopg2_is_a_config_error_not_an_import_traceback(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # what a broken install looks like
    with pytest.raises(ConfigError, match=r"^POSTROOM_DATABASE_URL: cannot load the database "
                                          r"driver"):
        make_engine("postgresql://u@127.0.0.1/x")
