"""The stored text form of SCRAM-SHA-256 secrets: round trip, and damaged values refused."""

from __future__ import annotations

import base64

import pytest

from postroom.auth.sasl import scram_secrets
from postroom.store.users import format_scram_secrets, parse_scram_secrets

# RFC 7677 section 3 test vector: user "user", password "pencil"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


def test_format_is_dovecot_style_text() -> None:
    text = format_scram_secrets(scram_secrets("pencil", SALT, 4096))
    assert text.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert text.count("$") == 2 and text.count(":") == 2


def test_format_then_parse_round_trips() -> None:
    found = scram_secrets("pencil", SALT, 4096)
    assert parse_scram_secrets(format_scram_secrets(found)) == found


def test_round_trip_keeps_a_random_salt_and_high_iterations() -> None:
    found = scram_secrets("correct horse", iterations=10000)
    assert parse_scram_secrets(format_scram_secrets(found)) == found


def test_password_is_not_in_the_stored_text() -> None:
    text = format_scram_secrets(scram_secrets("pencil", SALT, 4096))
    assert "pencil" not in text and base64.b64encode(b"pencil").decode() not in text


@pytest.mark.parametrize("text", [
    "",
    "$2b$12$notscram",
    "SCRAM-SHA-1$4096:c2FsdA==$a:b",
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==",
    "SCRAM-SHA-256$many:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
    "SCRAM-SHA-256$4096:***$" + "A" * 44 + ":" + "A" * 44,
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
    "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
])
def test_damaged_stored_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_scram_secrets(text)
