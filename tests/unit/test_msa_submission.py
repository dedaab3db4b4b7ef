"""The msa's pure message helpers: header scanning, From: addresses, Date/Message-ID, signing."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import dkim
import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.mailauth.dkimsign import dns_txt_value, generate_keys
from postroom.net.peers import is_loopback
from postroom.secretbox import DKIM_PRIVATE_KEY, Keyring, SecretError
from postroom.smtp.session import Session
from postroom_msa.limits import sliding_estimate
from postroom_msa.lookups import SigningKey
from postroom_msa.policy import MSAPolicy
from postroom_msa.submission import (
    add_missing_fields,
    header_end,
    header_fields,
    mailbox_addresses,
    sign_all,
    values,
)

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
MSG = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
       b" there\r\n\r\nbody line\r\nFrom: not-a-header@example.com\r\n")


def test_header_end_is_the_blank_line():
    assert MSG[header_end(MSG):].startswith(b"\r\nbody line")


def test_header_end_stops_at_a_line_that_is_not_a_field():
    data = b"From: a@b.c\r\nthis is body\r\n"
    assert data[header_end(data):] == b"this is body\r\n"


def test_header_end_without_body_is_the_end():
    data = b"From: a@b.c\r\nSubject: x\r\n"
    assert header_end(data) == len(data)


def test_header_fields_are_unfolded_and_body_from_lines_ignored():
    fields = header_fields(MSG)
    assert values(fields, "subject") == ["hi there"]
    assert values(fields, "from") == ["Alice <alice@example.org>"]


def test_a_malformed_line_does_not_hide_the_fields_after_it():
    data = (b"From: alice@example.org\r\nthis line is no field\r\n"
            b"From: ceo@example.com\r\nSubject: x\r\n\r\nFrom: body@example.net\r\n")
    fields = header_fields(data)
    assert values(fields, "from") == ["alice@example.org", "ceo@example.com"]
    assert values(fields, "subject") == ["x"]


def test_malformed_lines_that_a_lenient_reader_takes_for_from_count_as_from():
    for head in (b"Subject: x\r\nFrom\x01: ceo@example.com\r\n",
                 b"Subject: x\r\nFr om: ceo@example.com\r\n",
                 b" From: ceo@example.com\r\n",  # a first line that is a continuation
                 b"junk\r\n From: ceo@example.com\r\n"):  # a continuation of junk
        data = head + b"From: alice@example.org\r\n\r\nbody\r\n"
        assert values(header_fields(data), "from")[0] == "ceo@example.com", head


def test_a_malformed_line_without_a_colon_is_skipped():
    data = b"Subject: x\r\njunk line\r\nFrom: alice@example.org\r\n\r\n"
    assert header_fields(data) == [("subject", "x"), ("from", "alice@example.org")]


def test_obsolete_folding_with_blank_continuations_keeps_one_field():
    data = b"From: Alice\r\n \r\n\t<alice@example.org>\r\nTo: b@example.net\r\n\r\n"
    assert values(header_fields(data), "from") == ["Alice \t<alice@example.org>"]


def test_missing_fields_go_before_a_malformed_line():
    data = b"From: a@b.example\r\nnot a field\r\nSubject: x\r\n\r\nbody\r\n"
    fixed, added = add_missing_fields(data, queue_id="Q", hostname="h", now=NOW)
    assert added == ["Date", "Message-ID"]
    assert fixed.startswith(b"From: a@b.example\r\nDate: ")
    assert fixed.endswith(b"@h>\r\nnot a field\r\nSubject: x\r\n\r\nbody\r\n")


def test_mailbox_addresses_reads_display_names_and_lists():
    assert mailbox_addresses('"Alice" <alice@example.org>, bob@example.net') == [
        "alice@example.org", "bob@example.net"]


def test_mailbox_addresses_sees_both_addresses_of_a_display_name_trick():
    found = mailbox_addresses("alice@example.org <ceo@example.com>")
    assert found is not None and "ceo@example.com" in found


def test_mailbox_addresses_of_garbage_is_none():
    assert mailbox_addresses("undisclosed-recipients:;") is None
    assert mailbox_addresses("alice") is None


def test_missing_date_and_message_id_are_added_at_the_end_of_the_header():
    data = b"From: a@b.example\r\nSubject: x\r\n\r\nbody\r\n"
    fixed, added = add_missing_fields(data, queue_id="01ABCDEFGHJKMNPQ", hostname="mx.test",
                                      now=NOW)
    assert added == ["Date", "Message-ID"]
    head, _, body = fixed.partition(b"\r\n\r\n")
    assert body == b"body\r\n"
    assert b"\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000" in head
    assert re.search(rb"\r\nMessage-ID: <01ABCDEFGHJKMNPQ\.[0-9a-f]{12}@mx\.test>$", head)


def test_present_date_and_message_id_are_left_alone():
    data = b"From: a@b.example\r\nDate: x\r\nMessage-Id: <1@x>\r\n\r\nbody\r\n"
    assert add_missing_fields(data, queue_id="Q", hostname="h", now=NOW) == (data, [])


def test_fields_are_added_to_a_message_without_a_body():
    fixed, _ = add_missing_fields(b"From: a@b.example\r\n", queue_id="Q", hostname="h",
                                  now=NOW)
    assert fixed.startswith(b"From: a@b.example\r\nDate: ")
    assert fixed.endswith(b"@h>\r\n")


def test_sign_all_makes_one_verifiable_signature_per_key():
    keys, txt = [], {}
    for algorithm, selector in (("rsa-sha256", "r1"), ("ed25519-sha256", "e1")):
        pem, _ = generate_keys(algorithm)
        keys.append(SigningKey("example.org", selector, algorithm, pem.decode()))
        txt[f"{selector}._domainkey.example.org."] = dns_txt_value(pem, algorithm).encode()
    signed = sign_all(MSG, keys, Keyring()) + MSG
    verifier = dkim.DKIM(signed)
    assert [verifier.verify(idx=i, dnsfunc=lambda name, timeout=5: txt[name.decode()])
            for i in range(2)] == [True, True]


def test_sliding_estimate_weights_the_previous_bucket_by_its_overlap():
    assert sliding_estimate(10, 2, elapsed=0, window=60) == 12
    assert sliding_estimate(10, 2, elapsed=30, window=60) == 7
    assert sliding_estimate(10, 2, elapsed=60, window=60) == 2


def test_plaintext_auth_only_on_loopback_and_only_when_enabled():
    def policy(allow: bool) -> MSAPolicy:
        return MSAPolicy(None, limiter=None, limits=None, submitter=None,  # type: ignore[arg-type]
                         redis_pool=None, reactor=None,  # type: ignore[arg-type]
                         allow_plaintext_auth_on_loopback=allow)
    loopback, remote = Session("127.0.0.1", 1), Session("192.0.2.1", 1)
    assert policy(True).allow_auth_without_tls(loopback)
    assert not policy(True).allow_auth_without_tls(remote)
    assert not policy(False).allow_auth_without_tls(loopback)
    assert is_loopback("::1") and not is_loopback("not an ip")


@given(st.binary(max_size=400))
def test_header_scanning_never_fails_on_any_bytes(data: bytes):
    message = data.replace(b"\r", b"").replace(b"\n", b"\r\n") + b"\r\n"
    end = header_end(message)
    assert 0 <= end <= len(message)
    header_fields(message)
    fixed, _ = add_missing_fields(message, queue_id="Q", hostname="h", now=NOW)
    assert fixed.endswith(message[end:])


def test_sign_all_opens_encrypted_keys_and_plaintext_ones_alike():
    ring = Keyring(bytes(32))
    keys, txt = [], {}
    for algorithm, selector, sealed in (("rsa-sha256", "r1", True),
                                        ("ed25519-sha256", "e1", False)):
        pem, _ = generate_keys(algorithm)
        stored = ring.seal(pem.decode(), DKIM_PRIVATE_KEY) if sealed else pem.decode()
        keys.append(SigningKey("example.org", selector, algorithm, stored))
        txt[f"{selector}._domainkey.example.org."] = dns_txt_value(pem, algorithm).encode()
    signed = sign_all(MSG, keys, ring) + MSG
    verifier = dkim.DKIM(signed)
    assert [verifier.verify(idx=i, dnsfunc=lambda name, timeout=5: txt[name.decode()])
            for i in range(2)] == [True, True]


def test_sign_all_with_a_key_sealed_by_an_unknown_key_raises_a_secret_error():
    pem, _ = generate_keys("ed25519-sha256")
    stored = Keyring(bytes(32)).seal(pem.decode(), DKIM_PRIVATE_KEY)
    with pytest.raises(SecretError, match="POSTROOM_SECRET_KEY_FILE"):
        sign_all(MSG, [SigningKey("example.org", "e1", "ed25519-sha256", stored)], Keyring())
