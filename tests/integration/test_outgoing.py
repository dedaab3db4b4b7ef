"""postroom.outgoing against a real PostgreSQL: what we write is signed, what we forward is
rewritten and sealed, and bounces to our SRS addresses find the original sender."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import dkim
import pytest

from postroom import outgoing
from postroom.auth.passwords import hash_password
from postroom.mailauth.srs import SRS
from postroom.outgoing import Outgoing
from postroom.secretbox import Keyring
from postroom.store import aliases, domains, messages, spool, users
from postroom.store import dkim as dkim_store
from postroom.store.dkim import DkimKeyInfo
from postroom_mda.delivery import Options, deliver_recipient, ensure_metadata

cheap = functools.partial(hash_password, ln=4)
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SRS_KEYS = SRS((b"test secret",))
REPLY = (b"From: <alice@example.test>\r\nTo: <bob@remote.test>\r\nSubject: away\r\n"
         b"\r\nI am away.\r\n")


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "example.test")
    database.run_sync(users.add_user, "alice@example.test", "pw", hash_fn=cheap)
    return database


@pytest.fixture
def keys(db) -> list[DkimKeyInfo]:
    return [db.run_sync(dkim_store.generate_key, "example.test", algorithm)
            for algorithm in ("rsa-sha256", "ed25519-sha256")]


def dnsfunc(keys: list[DkimKeyInfo]):
    records = {f"{k.selector}._domainkey.{k.domain}":
               f"v=DKIM1; k={'rsa' if k.algorithm == 'rsa-sha256' else 'ed25519'}; "
               f"p={k.public_key_b64}" for k in keys}

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode().rstrip("."), "").encode()
    return lookup


def stored(db, envelope) -> tuple[spool.SpoolInfo, bytes]:
    info = db.run_sync(spool.get_spool, envelope.queue_id)
    return info, db.run_sync(messages.get_message, info.message_id)


def test_originate_signs_with_every_active_key_of_the_nearest_domain_with_keys(db, keys):
    made = db.run_sync(outgoing.originate, Outgoing("mx.example.test"), REPLY, mail_from="",
                       rcpts=["bob@remote.test"], from_domain="mx.example.test", now=NOW)
    info, message = stored(db, made)
    assert made.stream == "outbound" and info.mail_from == ""
    assert [r.address for r in info.recipients] == ["bob@remote.test"]
    assert message.count(b"DKIM-Signature:") == 2 and b"d=example.test" in message
    # both signatures verify (dkimpy verifies one signature per index)
    checker = dkim.DKIM(message)
    assert all(checker.verify(idx=i, dnsfunc=dnsfunc(keys)) for i in range(2))


def test_originate_without_keys_sends_unsigned(db):
    made = db.run_sync(outgoing.originate, Outgoing("mx.example.test"), REPLY, mail_from="",
                       rcpts=["bob@remote.test"], from_domain="example.test", now=NOW)
    _info, message = stored(db, made)
    assert message == REPLY


def test_originate_with_an_unreadable_key_sends_unsigned_rather_than_never(db):
    sealed_with_other = Keyring(b"k" * 32)
    db.run_sync(dkim_store.generate_key, "example.test", "rsa-sha256", keyring=sealed_with_other)
    made = db.run_sync(outgoing.originate, Outgoing("mx.example.test", Keyring()), REPLY,
                       mail_from="", rcpts=["bob@remote.test"], from_domain="example.test",
                       now=NOW)
    _info, message = stored(db, made)
    assert message == REPLY


@pytest.mark.parametrize(("sender", "expected"), [
    ("", ""),  # the null sender stays null
    ("carol@example.test", "carol@example.test"),  # one of our domains: SPF passes already
])
def test_forward_sender_keeps_what_needs_no_rewriting(db, sender, expected):
    with_srs = Outgoing("mx.example.test", srs=SRS_KEYS)
    assert db.run_sync(outgoing.forward_sender, with_srs, sender, "example.test") == expected


def test_forward_sender_rewrites_a_foreign_sender_with_srs_and_only_with_a_key(db):
    with_srs = Outgoing("mx.example.test", srs=SRS_KEYS)
    rewritten = db.run_sync(outgoing.forward_sender, with_srs, "bob@remote.test", "example.test")
    assert rewritten.startswith("SRS0=") and rewritten.endswith("@example.test")
    assert outgoing.bounce_recipient(with_srs, rewritten) == "bob@remote.test"
    plain = Outgoing("mx.example.test")
    assert db.run_sync(outgoing.forward_sender, plain, "bob@remote.test",
                       "example.test") == "bob@remote.test"


def test_an_alias_forward_is_a_sealed_copy_from_the_srs_address(db, keys):
    db.run_sync(aliases.add_alias, "fwd@example.test", "dave@remote.test")
    original = (b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=bob@remote.test;"
                b" dkim=none; arc=none; dmarc=none\r\n"
                b"From: <bob@remote.test>\r\nTo: <fwd@example.test>\r\nSubject: hi\r\n"
                b"\r\nhello\r\n")
    qid = db.run_sync(spool.create_spool, kind="inbound", mail_from="bob@remote.test",
                      recipients=[("fwd@example.test", "deliver", None, None)],
                      message=original)
    [rid] = [r.id for r in db.run_sync(spool.get_spool, qid).recipients]
    options = Options(hostname="mx.example.test",
                      outgoing=Outgoing("mx.example.test", srs=SRS_KEYS))
    db.run_sync(ensure_metadata, qid)
    outcome = db.run_sync(deliver_recipient, rid, options, datetime.now(UTC))
    [envelope] = outcome.envelopes
    info, message = stored(db, envelope)
    assert info.mail_from.startswith("SRS0=") and info.mail_from.endswith("@example.test")
    assert SRS_KEYS.reverse(info.mail_from) == "bob@remote.test"
    assert message.startswith(b"ARC-Seal: i=1; cv=none;")
    cv, _sets, why = dkim.arc_verify(message, dnsfunc=dnsfunc(keys))
    assert cv == b"pass", why


def test_a_forward_without_our_results_or_an_rsa_key_goes_out_unsealed(db):
    message = b"From: <bob@remote.test>\r\nTo: <x@example.test>\r\n\r\nhi\r\n"
    assert db.run_sync(outgoing.arc_seal, Outgoing("mx.example.test"), message,
                       "example.test") == message
    db.run_sync(dkim_store.generate_key, "example.test", "rsa-sha256")
    assert db.run_sync(outgoing.arc_seal, Outgoing("mx.example.test"), message,
                       "example.test") == message  # no Authentication-Results of ours


def test_bounce_recipient_leaves_invalid_srs_and_plain_addresses_alone():
    with_srs = Outgoing("mx.example.test", srs=SRS_KEYS)
    forged = SRS((b"other",)).forward("bob@remote.test", "example.test")
    assert outgoing.bounce_recipient(with_srs, forged) == forged
    assert outgoing.bounce_recipient(with_srs, "alice@example.test") == "alice@example.test"
