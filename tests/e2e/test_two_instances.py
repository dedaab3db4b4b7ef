"""Two whole Postroom instances mailing each other over loopback (issue 5, "What it must show").

one.test runs on 127.0.0.2 and two.test on 127.0.0.3, each with its six
services, its own database, Redis prefix and certificate; the test DNS server
publishes both domains' MX, SPF, DKIM (the keys ``postroom dkim generate``
made) and DMARC (p=reject). Mail goes MUA -> msa -> mta relay -> the other
mta:25 -> dmarc -> mda -> imap/pop3, all real processes and real clients.
"""

from __future__ import annotations

import email
import secrets
import time
from collections.abc import Iterator
from email import policy

import pytest

from tests.support.dns import DNSServer
from tests.support.instance import (
    Instance,
    authentication_results,
    fresh_user,
    methods,
    queue_id_of,
    settle,
    shared_free_port,
)

pytestmark = pytest.mark.slow

ONE, TWO = "127.0.0.2", "127.0.0.3"


class Pair:
    def __init__(self, one: Instance, two: Instance) -> None:
        self.one = one
        self.two = two


@pytest.fixture(scope="module")
def pair(redis_url: str, dns_server_session: DNSServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    port = shared_free_port(ONE, TWO)
    base = tmp_path_factory.mktemp("two-instances")
    with Instance("one.test", ONE, redis_url, base / "one", smtp_port=port,
                  dns=dns_server_session) as one, \
         Instance("two.test", TWO, redis_url, base / "two", smtp_port=port,
                  dns=dns_server_session) as two:
        started = time.monotonic()
        one.spawn()
        two.spawn()
        # the operator's CLI runs while the twelve services start: they need no domain yet
        one.setup_domain()
        two.setup_domain()
        one.wait()
        two.wait()
        print(f"\ntwo instances: twelve services healthy {time.monotonic() - started:.1f}s "
              "after the start")
        yield Pair(one, two)


@pytest.fixture(autouse=True)
def zones(pair: Pair, dns_server: DNSServer) -> Pair:
    """Both domains' records, republished for each test (the fixture empties the server)."""
    pair.one.publish("p=reject")
    pair.two.publish("p=reject")
    return pair


def parse(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=policy.compat32)


def assert_our_results_pass(raw: bytes, authserv_id: str) -> None:
    ours = [value for ident, value in authentication_results(raw) if ident == authserv_id]
    assert len(ours) == 1, authentication_results(raw)
    found = methods(ours[0])
    assert found.get("spf") and set(found["spf"]) == {"pass"}, ours[0]  # mailfrom and helo
    assert found.get("dkim") and set(found["dkim"]) == {"pass"}, ours[0]
    assert found.get("dmarc") == ["pass"], ours[0]


def test_alice_to_bob_arrives_over_imap_and_pop3_with_spf_dkim_dmarc_pass(pair: Pair) -> None:
    alice, bob = fresh_user(pair.one, "alice"), fresh_user(pair.two, "bob")
    subject = f"hello {secrets.token_hex(4)}"
    # a forged result in the receiver's name must not survive; a foreign one is kept
    message = (f"From: Alice <{alice}>\r\nTo: <{bob}>\r\nSubject: {subject}\r\n"
               f"Authentication-Results: {pair.two.hostname}; dkim=pass header.d=forged.test\r\n"
               "Authentication-Results: elsewhere.test; spf=none\r\n"
               "\r\nHi Bob,\r\n.see you\r\n").encode()
    started = time.monotonic()
    reply = pair.one.submit(alice, [bob], message)
    [raw] = pair.two.wait_for_mail(bob, timeout=30)
    print(f"\nsubmission-to-IMAP latency one->two: {time.monotonic() - started:.3f}s "
          f"(queue id {queue_id_of(reply)})")
    assert parse(raw)["Subject"] == subject
    assert_our_results_pass(raw, pair.two.hostname)
    assert "forged.test" not in raw.decode(errors="replace")
    assert any(ident == "elsewhere.test" for ident, _ in authentication_results(raw))
    pop = pair.two.pop3(bob)
    try:
        count, _size = pop.stat()
        assert count == 1
        _resp, lines, _octets = pop.retr(1)
    finally:
        pop.quit()
    assert b"\r\n".join(lines) + b"\r\n" == raw


def test_postmaster_and_abuse_of_a_new_domain_reach_its_first_user(pair: Pair) -> None:
    """RFC 5321 4.5.1 / RFC 2142: the domain was made by `postroom domain add` with no
    role addresses; its first user got them (docs/mda.md, "Role addresses")."""
    from postroom.store import aliases

    first = (pair.one.db.run_sync(aliases.first_user, pair.one.domain)
             or fresh_user(pair.one, "first"))
    sender = fresh_user(pair.two, "reporter")
    already = len(pair.one.fetch_all(first))
    subjects = []
    for role in ("Postmaster", "abuse"):
        subject = f"to {role} {secrets.token_hex(4)}"
        subjects.append(subject)
        message = (f"From: <{sender}>\r\nTo: <{role}@{pair.one.domain}>\r\n"
                   f"Subject: {subject}\r\n\r\nplease look\r\n").encode()
        pair.two.submit(sender, [f"{role}@{pair.one.domain}"], message)
    arrived = pair.one.wait_for_mail(first, count=already + 2, timeout=30)
    assert sorted(parse(raw)["Subject"] for raw in arrived[already:]) == sorted(subjects)


def test_bob_replies_to_alice_and_she_sees_pass_from_one_test(pair: Pair) -> None:
    alice, bob = fresh_user(pair.one, "alice"), fresh_user(pair.two, "bob")
    pair.one.submit(alice, [bob], f"From: {alice}\r\nTo: {bob}\r\nSubject: ping\r\n\r\n"
                    "ping\r\n".encode())
    [first] = pair.two.wait_for_mail(bob)
    original_id = parse(first)["Message-ID"]
    assert original_id, "the msa adds a Message-ID"
    started = time.monotonic()
    pair.two.submit(bob, [alice], (f"From: {bob}\r\nTo: {alice}\r\nSubject: Re: ping\r\n"
                                   f"In-Reply-To: {original_id}\r\n\r\npong\r\n").encode())
    [answer] = pair.one.wait_for_mail(alice)
    print(f"\nsubmission-to-IMAP latency two->one: {time.monotonic() - started:.3f}s")
    assert parse(answer)["In-Reply-To"] == original_id
    assert_our_results_pass(answer, pair.one.hostname)


def dotted_message(sender: str, rcpt: str, shift: int) -> tuple[bytes, bytes]:
    """A message whose body has a lone ``.`` line at every third offset around 16 KiB.

    Three messages (shift 0, 1, 2) put a ``.`` line start at every offset from
    16 KiB - 300 to 16 KiB + 300 of the message as submitted. Returns the
    message and its body.
    """
    header = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: dots {shift}\r\n\r\n".encode()
    start = 16384 - 300 - len(header)
    filler = b"x" * 76 + b"\r\n"
    body = filler * (start // len(filler))
    body += b"y" * (start - len(body) + shift) + b"\r\n"
    body += b".\r\n" * 200
    body += b"..\r\n.QUIT\r\n.\r\nMAIL FROM:<smuggled@evil.test>\r\nlast line\r\n"
    return header + body, body


def test_a_dot_line_at_every_offset_around_16k_arrives_intact(pair: Pair) -> None:
    alice, bob = fresh_user(pair.one, "alice"), fresh_user(pair.two, "bob")
    bodies = []
    for shift in range(3):
        message, body = dotted_message(alice, bob, shift)
        pair.one.submit(alice, [bob], message)
        bodies.append(body)
    arrived = pair.two.wait_for_mail(bob, count=3)
    by_subject = {parse(raw)["Subject"]: raw for raw in arrived}
    for shift, body in enumerate(bodies):
        raw = by_subject[f"dots {shift}"]
        assert raw.split(b"\r\n\r\n", 1)[1] == body
        assert_our_results_pass(raw, pair.two.hostname)  # dkim=pass: not one byte changed
    assert len(arrived) == 3


# --- open relay: two's port 25 from an unauthenticated client

RELAY_TRICKS = [
    "victim@one.test",
    "VICTIM@ONE.TEST",
    "victim%one.test@two.test",
    "victim%one.test@TWO.TEST",
    "@two.test:victim@one.test",
    "@two.test,@mx.two.test:victim@one.test",
    '"victim@one.test"@two.test',
    '"victim%one.test"@two.test',
    '"victim!one.test"@two.test',
    "one.test!victim@two.test",
    "victim@one.test@two.test",
    "victim@two.test@one.test",
    "victim@one.test.",
    "victim@two.test.",
    "victim@[127.0.0.2]",
    "victim@[127.0.0.3]",
    "victim@[IPv6:::1]",
    "victim@one.test.two.test",
]


def test_every_relay_trick_is_refused_and_only_local_recipients_are_accepted(
        pair: Pair) -> None:
    bob = fresh_user(pair.two, "bob")
    before = pair.one.query("SELECT count(*) FROM spool_messages")[0][0]
    refused = {}
    for trick in RELAY_TRICKS:
        # a session each: the engine hangs up after POSTROOM_SMTP_MAX_ERRORS refusals
        client = pair.two.smtp(source="127.0.0.1")
        try:
            assert client.mail("spammer@elsewhere.test")[0] == 250
            code, reply = client.rcpt(f"<{trick}>")
            refused[trick] = (code, reply.decode(errors="replace"))
        finally:
            client.close()
    accepted = [t for t, (code, _) in refused.items() if code < 400]
    assert accepted == [], refused
    assert all(code >= 500 for code, _ in refused.values()), refused
    client = pair.two.smtp(source="127.0.0.1")
    try:
        assert client.mail("spammer@elsewhere.test")[0] == 250
        assert client.rcpt("<victim@one.test>")[0] == 554
        assert client.rcpt(f"<{bob.upper()}>")[0] == 250
        code, reply = client.data(f"From: spammer@elsewhere.test\r\nTo: {bob}\r\n"
                                  "Subject: relay?\r\n\r\nbody\r\n".encode())
    finally:
        client.quit()
    # whatever the verdict on the message, it can only ever reach bob, never one.test
    rows = pair.two.query("SELECT r.address FROM spool_recipients r "
                          "JOIN spool_messages m ON m.id = r.spool_message_id "
                          "WHERE m.mail_from = 'spammer@elsewhere.test'")
    assert {a for (a,) in rows} <= {bob.lower()}, rows
    settle(2.0)
    assert pair.one.query("SELECT count(*) FROM spool_messages")[0][0] == before
    print(f"\nrelay refusals: { {t: c for t, (c, _) in refused.items()} } DATA: {code} {reply!r}")
