"""check_password_strength: the rule every password a person chooses must pass."""

from __future__ import annotations

import pytest

from postroom.auth.passwords import (
    DEFAULT_MIN_LENGTH,
    WeakPassword,
    check_password_strength,
    is_common_password,
)


def test_a_long_uncommon_password_passes() -> None:
    check_password_strength("plum tractor sideways 9")


def test_default_minimum_is_twelve() -> None:
    assert DEFAULT_MIN_LENGTH == 12
    check_password_strength("x7#kq!2mzp0w")
    with pytest.raises(WeakPassword, match="at least 12"):
        check_password_strength("x7#kq!2mzp0")


def test_minimum_is_a_parameter() -> None:
    check_password_strength("x7#kq!2m", min_length=8)
    with pytest.raises(WeakPassword, match="at least 16"):
        check_password_strength("x7#kq!2mzp0wabc", min_length=16)


def test_length_counts_characters_not_bytes() -> None:
    with pytest.raises(WeakPassword):
        check_password_strength("éééééé" + "ab12")  # 10 characters, 16 UTF-8 bytes


@pytest.mark.parametrize("common", ["qwerty123456", "QWERTY123456", "1q2w3e4r5t6y",
                                    "123qweASDzxc"])
def test_common_passwords_are_refused_in_any_case(common: str) -> None:
    assert is_common_password(common)
    with pytest.raises(WeakPassword, match="common passwords"):
        check_password_strength(common)


def test_short_common_passwords_are_on_the_list_too() -> None:
    assert is_common_password("Password")
    assert not is_common_password("plum tractor sideways 9")


def test_one_repeated_character_is_refused() -> None:
    with pytest.raises(WeakPassword, match="repeated"):
        check_password_strength("a" * 20)


def test_the_account_name_is_refused() -> None:
    with pytest.raises(WeakPassword, match="own name"):
        check_password_strength("Alexander.Smith", account="alexander.smith@example.org")
    with pytest.raises(WeakPassword, match="own name"):
        check_password_strength("alexander.smith@example.org",
                                account="Alexander.Smith@example.org")


def test_absurdly_long_passwords_are_refused() -> None:
    with pytest.raises(WeakPassword, match="too long"):
        check_password_strength("ab" * 1000)


def test_weak_password_is_a_value_error() -> None:
    assert issubclass(WeakPassword, ValueError)
