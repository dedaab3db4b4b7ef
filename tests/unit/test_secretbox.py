"""The secretbox envelope: round trip, tampering, wrong and missing keys, legacy plaintext."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from postroom import secretbox
from postroom.secretbox import (
    DKIM_PRIVATE_KEY,
    Keyring,
    SecretError,
    SecretKeyMissing,
    SecretKeyUnknown,
    SecretTampered,
)

PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGx0...\n-----END PRIVATE KEY-----\n"
KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_sealed_value_opens_to_the_plaintext_and_hides_it():
    ring = Keyring(KEY)
    sealed = ring.seal(PEM, DKIM_PRIVATE_KEY)
    assert sealed.startswith(f"enc:v1:{secretbox.key_id(KEY)}:")
    assert "PRIVATE KEY" not in sealed and sealed.isascii() and "\n" not in sealed
    assert ring.open(sealed, DKIM_PRIVATE_KEY) == PEM


def test_each_seal_uses_a_fresh_nonce():
    ring = Keyring(KEY)
    assert ring.seal(PEM, DKIM_PRIVATE_KEY) != ring.seal(PEM, DKIM_PRIVATE_KEY)


def test_legacy_plaintext_is_returned_as_it_is_with_or_without_a_key():
    assert Keyring(KEY).open(PEM, DKIM_PRIVATE_KEY) == PEM
    assert Keyring().open(PEM, DKIM_PRIVATE_KEY) == PEM


@pytest.mark.parametrize("position", [0, 10, -1])
def test_a_changed_ciphertext_byte_is_detected(position):
    ring = Keyring(KEY)
    sealed = ring.seal(PEM, DKIM_PRIVATE_KEY)
    head, _, body = sealed.rpartition(":")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[position] ^= 0x01
    tampered = f"{head}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(SecretTampered, match="does not authenticate"):
        ring.open(tampered, DKIM_PRIVATE_KEY)


def test_a_value_sealed_for_another_purpose_does_not_open():
    ring = Keyring(KEY)
    sealed = ring.seal(PEM, "users.scram_secrets")
    with pytest.raises(SecretTampered):
        ring.open(sealed, DKIM_PRIVATE_KEY)


def test_a_relabelled_key_id_does_not_open():
    # the key id is authenticated too: a value cannot be passed off as another key's
    ring = Keyring(KEY, [OTHER])
    sealed = ring.seal(PEM, DKIM_PRIVATE_KEY)
    relabelled = sealed.replace(secretbox.key_id(KEY), secretbox.key_id(OTHER))
    with pytest.raises(SecretTampered):
        ring.open(relabelled, DKIM_PRIVATE_KEY)


@pytest.mark.parametrize("damaged", ["enc:v1:", "enc:v1:abcd1234", "enc:v1:{kid}:!!!!",
                                     "enc:v1:{kid}:AAAA", "enc:v2:{kid}:AAAA"])
def test_damaged_envelopes_fail_with_one_line(damaged):
    ring = Keyring(KEY)
    value = damaged.format(kid=secretbox.key_id(KEY))
    with pytest.raises(SecretError) as caught:
        ring.open(value, DKIM_PRIVATE_KEY)
    assert "\n" not in str(caught.value)


def test_a_wrong_key_names_the_settings_and_the_key_id():
    sealed = Keyring(KEY).seal(PEM, DKIM_PRIVATE_KEY)
    with pytest.raises(SecretKeyUnknown) as caught:
        Keyring(OTHER).open(sealed, DKIM_PRIVATE_KEY)
    message = str(caught.value)
    assert secretbox.key_id(KEY) in message
    assert "POSTROOM_SECRET_KEY_FILE" in message and "POSTROOM_SECRET_OLD_KEY_FILES" in message
    assert "\n" not in message


def test_a_sealed_value_without_any_key_names_the_setting():
    sealed = Keyring(KEY).seal(PEM, DKIM_PRIVATE_KEY)
    with pytest.raises(SecretKeyMissing, match="POSTROOM_SECRET_KEY_FILE is not set"):
        Keyring().open(sealed, DKIM_PRIVATE_KEY)


def test_sealing_without_a_key_is_refused_and_seal_if_possible_keeps_plaintext():
    with pytest.raises(SecretKeyMissing, match="POSTROOM_SECRET_KEY_FILE"):
        Keyring().seal(PEM, DKIM_PRIVATE_KEY)
    assert Keyring().seal_if_possible(PEM, DKIM_PRIVATE_KEY) == PEM
    assert Keyring(KEY).seal_if_possible(PEM, DKIM_PRIVATE_KEY).startswith("enc:v1:")


def test_old_keys_open_but_never_seal():
    old_sealed = Keyring(OTHER).seal(PEM, DKIM_PRIVATE_KEY)
    ring = Keyring(KEY, [OTHER])
    assert ring.open(old_sealed, DKIM_PRIVATE_KEY) == PEM
    assert secretbox.sealed_with(ring.seal(PEM, DKIM_PRIVATE_KEY)) == secretbox.key_id(KEY)
    assert ring.needs_reseal(old_sealed) and ring.needs_reseal(PEM)
    assert not ring.needs_reseal(ring.seal(PEM, DKIM_PRIVATE_KEY))
    assert not Keyring().needs_reseal(PEM)


def test_the_open_cache_returns_the_same_plaintext_and_does_not_cache_errors():
    ring = Keyring(KEY)
    sealed = ring.seal(PEM, DKIM_PRIVATE_KEY)
    assert ring.open_cached(sealed, DKIM_PRIVATE_KEY) == PEM
    assert ring.open_cached(sealed, DKIM_PRIVATE_KEY) == PEM
    foreign = Keyring(OTHER).seal(PEM, DKIM_PRIVATE_KEY)
    for _ in range(2):
        with pytest.raises(SecretKeyUnknown):
            ring.open_cached(foreign, DKIM_PRIVATE_KEY)


def test_key_files_hold_base64_or_raw_bytes(tmp_path):
    written = secretbox.write_key_file(str(tmp_path / "k"))
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert secretbox.read_key_file(str(tmp_path / "k")) == written
    (tmp_path / "raw").write_bytes(KEY)
    assert secretbox.read_key_file(str(tmp_path / "raw")) == KEY
    (tmp_path / "url").write_text(base64.urlsafe_b64encode(b"\xff" * 32).decode() + "\n\n")
    assert secretbox.read_key_file(str(tmp_path / "url")) == b"\xff" * 32


def test_a_key_file_is_never_overwritten(tmp_path):
    secretbox.write_key_file(str(tmp_path / "k"))
    with pytest.raises(FileExistsError):
        secretbox.write_key_file(str(tmp_path / "k"))


@pytest.mark.parametrize("content", [b"", b"short", base64.b64encode(b"x" * 31),
                                     base64.b64encode(b"x" * 33), b"not base64 at all!" * 3])
def test_malformed_key_files_are_refused_naming_the_setting(tmp_path, content):
    (tmp_path / "k").write_bytes(content)
    with pytest.raises(SecretError, match=r"POSTROOM_SECRET_KEY_FILE=.*not a secret key"):
        secretbox.read_key_file(str(tmp_path / "k"))


def test_a_missing_key_file_names_the_setting(tmp_path):
    with pytest.raises(SecretError, match="POSTROOM_SECRET_OLD_KEY_FILES: cannot read"):
        Keyring.from_files(None, [str(tmp_path / "nope")])
