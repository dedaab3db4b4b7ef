"""Password hashing: scrypt strings, verification, rehash detection, bcrypt acceptance."""

from __future__ import annotations

import importlib.util

import pytest

from postroom.auth.passwords import DEFAULT_LN, hash_password, needs_rehash, verify_password

CHEAP = 4  # ln for tests: fast, same code path


def test_hash_is_self_describing_scrypt_string():
    stored = hash_password("s3cret", ln=CHEAP)
    scheme, params, salt, digest = stored.split("$")[1:]
    assert (scheme, params) == ("scrypt", f"ln={CHEAP},r=8,p=1")
    assert salt and digest and "s3cret" not in stored


def test_hash_of_same_password_differs_by_salt():
    assert hash_password("pw", ln=CHEAP) != hash_password("pw", ln=CHEAP)


def test_verify_accepts_right_password():
    assert verify_password("correct horse", hash_password("correct horse", ln=CHEAP))


def test_verify_rejects_wrong_password():
    assert not verify_password("wrong", hash_password("correct horse", ln=CHEAP))


def test_verify_treats_composed_and_decomposed_accents_alike():
    assert verify_password("caf\u0065\u0301", hash_password("caf\u00e9", ln=CHEAP))


@pytest.mark.parametrize("stored", ["", "plaintext", "$scrypt$", "$scrypt$ln=4,r=8,p=1$!!$!!",
                                    "$scrypt$ln=99,r=8,p=1$AAAA$AAAA", "$md5$x$y"])
def test_verify_rejects_malformed_stored_values_without_raising(stored):
    assert verify_password("anything", stored) is False


def test_default_parameters_hash_within_budget():
    import time

    start = time.perf_counter()
    stored = hash_password("pw")
    assert time.perf_counter() - start < 0.5
    assert f"ln={DEFAULT_LN}," in stored


def test_needs_rehash_false_for_current_parameters():
    assert not needs_rehash(hash_password("pw", ln=CHEAP), ln=CHEAP)


def test_needs_rehash_true_for_other_parameters():
    assert needs_rehash(hash_password("pw", ln=CHEAP))


def test_needs_rehash_true_for_foreign_scheme():
    assert needs_rehash("$2b$12$abcdefghijklmnopqrstuuJ3sY0O3a4G2JjO1o8m0m7dJQnZ3y2W")


def test_bcrypt_hash_is_verified_when_bcrypt_is_installed():
    stored = "$2b$04$1CcLjVH4aBXqY1o0x7vZVO7m9m2sD8Hq7q7OjvWXn0cUuQmHhQn3K"
    if importlib.util.find_spec("bcrypt") is None:
        # without the package a bcrypt hash can never match (and never raises)
        assert verify_password("pw", stored) is False
    else:
        import bcrypt

        made = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        assert verify_password("pw", made) and not verify_password("nope", made)
