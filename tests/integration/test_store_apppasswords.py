"""App passwords and two-factor login in a real PostgreSQL: the protocol login check, last use,
revocation, TOTP set-up with replay protection, single-use recovery codes, sealed secrets."""

from __future__ import annotations

import functools
import re
import time

import pytest
from sqlalchemy import text

from postroom.auth import totp as totp_codes
from postroom.auth.passwords import hash_password
from postroom.secretbox import Keyring, SecretKeyMissing, is_sealed
from postroom.store import apppasswords, domains, totp, users
from postroom.store.errors import AlreadyExists, NotFound

cheap = functools.partial(hash_password, ln=4)
ADDRESS = "alice@example.test"
PASSWORD = "the main password"


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "example.test")
    database.run_sync(users.add_user, ADDRESS, PASSWORD, hash_fn=cheap)
    return database


def sql(db, statement, **params):
    return db.run_sync(lambda s: s.execute(text(statement), params).all())


def login(db, password, protocol="imap", peer="192.0.2.7", address=ADDRESS):
    return db.run_sync(apppasswords.authenticate, address, password, protocol=protocol,
                       peer=peer)


def create(db, name="phone", protocols=None):
    return db.run_sync(apppasswords.create, ADDRESS, name, protocols, hash_fn=cheap)


# --- app passwords

def test_a_secret_is_four_groups_of_letters_and_only_its_hash_and_lookup_are_stored(db):
    secret = create(db)
    assert re.fullmatch(r"[a-z]{4}-[a-z]{4}-[a-z]{4}-[a-z]{4}", secret)
    [(lookup, stored)] = sql(db, "SELECT lookup, hash FROM app_passwords")
    assert lookup == secret[:4] and stored.startswith("$scrypt$")
    assert secret.replace("-", "")[4:] not in str(sql(db, "SELECT * FROM app_passwords"))


def test_an_app_password_logs_in_typed_with_spaces_or_capitals(db):
    secret = create(db)
    for typed in (secret, secret.replace("-", ""), secret.replace("-", " ").upper()):
        found = login(db, typed)
        assert found.user is not None and found.user.address == ADDRESS
        assert found.app_password == "phone" and found.credential == "app_password"


def test_the_main_password_still_logs_in_without_two_factor(db):
    found = login(db, PASSWORD)
    assert found.user is not None and found.app_password is None
    assert found.credential == "password"


def test_an_app_password_works_only_for_its_protocols(db):
    secret = create(db, protocols=["imap", "submission"])
    assert login(db, secret, "imap").user is not None
    assert login(db, secret, "submission").user is not None
    refused = login(db, secret, "pop3")
    assert refused.user is None and refused.refusal is None


def test_unknown_protocols_and_bad_names_are_refused(db):
    with pytest.raises(ValueError):
        create(db, protocols=["smtp"])
    with pytest.raises(ValueError):
        create(db, name="")
    with pytest.raises(ValueError):
        login(db, PASSWORD, protocol="http")
    with pytest.raises(NotFound):
        db.run_sync(apppasswords.create, "nobody@example.test", "x", None, hash_fn=cheap)


def test_a_revoked_app_password_stops_working_and_its_name_can_be_reused(db):
    secret = create(db)
    assert db.run_sync(apppasswords.revoke, ADDRESS, "phone") is True
    assert login(db, secret).user is None
    assert db.run_sync(apppasswords.revoke, ADDRESS, "phone") is False
    [info] = db.run_sync(apppasswords.list_app_passwords, ADDRESS)
    assert info.revoked_at is not None and not info.active
    again = create(db)
    assert login(db, again).user is not None and login(db, secret).user is None


def test_a_live_name_cannot_be_taken_twice(db):
    create(db)
    with pytest.raises(AlreadyExists):
        create(db)


def test_last_use_records_time_and_client_once_a_minute_unless_the_client_changes(db):
    secret = create(db, protocols=["pop3"])
    [before] = db.run_sync(apppasswords.list_app_passwords, ADDRESS)
    assert before.last_used_at is None and before.protocols == ("pop3",)
    login(db, secret, "pop3", peer="192.0.2.7")
    [first] = db.run_sync(apppasswords.list_app_passwords, ADDRESS)
    assert first.last_used_at is not None and first.last_used_ip == "192.0.2.7"
    login(db, secret, "pop3", peer="192.0.2.7")
    [same] = db.run_sync(apppasswords.list_app_passwords, ADDRESS)
    assert same.last_used_at == first.last_used_at
    login(db, secret, "pop3", peer="2001:db8::1")
    [moved] = db.run_sync(apppasswords.list_app_passwords, ADDRESS)
    assert moved.last_used_ip == "2001:db8::1"


def test_a_wrong_app_password_with_a_real_lookup_fails(db):
    secret = create(db)
    wrong = secret[:5] + ("a" if secret[5] != "a" else "b") + secret[6:]
    assert login(db, wrong).user is None


def test_an_inactive_account_cannot_use_an_app_password(db):
    secret = create(db)
    db.run_sync(users.set_user_active, ADDRESS, False)
    assert login(db, secret).user is None


def test_removing_the_account_removes_its_app_passwords(db):
    create(db)
    db.run_sync(users.remove_user, ADDRESS)
    assert sql(db, "SELECT count(*) FROM app_passwords") == [(0,)]


# --- two-factor login

def turn_on(db, keyring=None):
    secret, uri = db.run_sync(totp.begin_totp, ADDRESS, keyring=keyring)
    code = totp_codes.code_at_step(secret, totp_codes.step_at(time.time()))
    codes = db.run_sync(totp.enable_totp, ADDRESS, code, keyring=keyring)
    return secret, uri, codes


def user_id(db):
    return db.run_sync(users.get_user, ADDRESS).id


def test_begin_gives_a_secret_and_an_otpauth_uri_and_changes_nothing_yet(db):
    secret, uri = db.run_sync(totp.begin_totp, ADDRESS)
    assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
    status = db.run_sync(totp.totp_status, ADDRESS)
    assert status == totp.TotpStatus(enabled=False, pending=True, recovery_codes_left=0)
    assert login(db, PASSWORD).user is not None


def test_enable_needs_a_right_code(db):
    db.run_sync(totp.begin_totp, ADDRESS)
    with pytest.raises(totp.InvalidCode):
        db.run_sync(totp.enable_totp, ADDRESS, "000000", now=0.0)
    assert not db.run_sync(totp.totp_status, ADDRESS).enabled


def test_with_two_factor_on_the_main_password_is_refused_and_app_passwords_work(db):
    secret = create(db)
    _, _, codes = turn_on(db)
    assert len(codes) == 10 and len(set(codes)) == 10
    refused = login(db, PASSWORD)
    assert refused.user is None and refused.refusal == apppasswords.TWO_FACTOR_REFUSAL
    wrong = login(db, "not the password")
    assert wrong.user is None and wrong.refusal is None
    assert login(db, secret).user is not None
    # the web console's first factor still takes the main password
    info = db.run_sync(users.authenticate, ADDRESS, PASSWORD)
    assert info is not None and info.totp_enabled
    # and SCRAM, which would take the main password, is not offered secrets
    assert db.run_sync(users.scram_secrets_for, ADDRESS) is None


def test_a_totp_code_is_accepted_once_only(db):
    secret, _, _ = turn_on(db)
    now = time.time() + 60  # two steps after the one enabling used
    code = totp_codes.code_at_step(secret, totp_codes.step_at(now))
    assert db.run_sync(totp.verify_second_factor, user_id(db), code, now=now) is True
    assert db.run_sync(totp.verify_second_factor, user_id(db), code, now=now) is False


def test_a_code_one_step_off_is_accepted_two_steps_off_is_not(db):
    secret, _, _ = turn_on(db)
    now = time.time() + 300
    step = totp_codes.step_at(now)
    assert db.run_sync(totp.verify_second_factor, user_id(db),
                       totp_codes.code_at_step(secret, step + 2), now=now) is False
    assert db.run_sync(totp.verify_second_factor, user_id(db),
                       totp_codes.code_at_step(secret, step - 1), now=now) is True


def test_recovery_codes_work_once_each(db):
    _, _, codes = turn_on(db)
    ident = user_id(db)
    assert db.run_sync(totp.verify_second_factor, ident, codes[0].upper()) is True
    assert db.run_sync(totp.verify_second_factor, ident, codes[0]) is False
    assert db.run_sync(totp.verify_second_factor, ident, "not-a-code") is False
    assert db.run_sync(totp.totp_status, ADDRESS).recovery_codes_left == 9


def test_disable_lets_the_main_password_in_again_and_forgets_the_codes(db):
    _, _, codes = turn_on(db)
    assert db.run_sync(totp.disable_totp, ADDRESS) is True
    assert login(db, PASSWORD).user is not None
    assert db.run_sync(totp.verify_second_factor, user_id(db), codes[1]) is False
    assert sql(db, "SELECT count(*) FROM totp_recovery_codes") == [(0,)]
    assert db.run_sync(totp.disable_totp, ADDRESS) is False


def test_the_totp_secret_is_sealed_when_a_key_is_configured(db):
    keyring = Keyring(b"k" * 32)
    secret, _, _ = turn_on(db, keyring)
    [(stored,)] = sql(db, "SELECT totp_secret FROM users")
    assert is_sealed(stored) and secret not in stored
    now = time.time() + 90
    code = totp_codes.code_at_step(secret, totp_codes.step_at(now))
    with pytest.raises(SecretKeyMissing):
        db.run_sync(totp.verify_second_factor, user_id(db), code, now=now)
    assert db.run_sync(totp.verify_second_factor, user_id(db), code, keyring=keyring,
                       now=now) is True
