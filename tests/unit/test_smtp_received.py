"""The Received: header builder (RFC 5321 section 4.4)."""

from __future__ import annotations

import datetime

from postroom.net.tls import TLSInfo
from postroom.smtp.grammar import Address
from postroom.smtp.received import received_header
from postroom.smtp.session import Session

WHEN = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def make_session(**fields: object) -> Session:
    session = Session(peer_ip="192.0.2.1", peer_port=1234, helo="client.example", esmtp=True)
    for key, value in fields.items():
        setattr(session, key, value)
    return session


def test_plain_esmtp_received_header() -> None:
    header = received_header(make_session(), hostname="mx.test", queue_id="Q1", when=WHEN)
    assert header == (b"Received: from client.example ([192.0.2.1])\r\n"
                      b"\tby mx.test (Postroom) with ESMTP id Q1; "
                      b"Tue, 02 Jan 2024 03:04:05 +0000\r\n")


def test_tls_and_auth_give_esmtpsa_and_the_cipher() -> None:
    session = make_session(tls_active=True, identity="alice", peer_name="host.example",
                           tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256))
    header = received_header(session, hostname="mx.test", queue_id="Q2", when=WHEN,
                             recipients=[Address("bob", "example.org")]).decode()
    assert "from client.example (host.example [192.0.2.1])" in header
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))" in header
    assert "with ESMTPSA id Q2" in header
    assert "for <bob@example.org>; Tue, 02 Jan 2024" in header


def test_several_recipients_are_not_listed() -> None:
    header = received_header(make_session(), hostname="mx.test", queue_id="Q3", when=WHEN,
                             recipients=[Address("a", "x.example"), Address("b", "x.example")])
    assert b"for <" not in header


def test_smtputf8_protocol_keyword() -> None:
    header = received_header(make_session(tls_active=True), hostname="mx.test", queue_id="Q4",
                             smtputf8=True, when=WHEN)
    assert b"with UTF8SMTPS id Q4" in header


def test_ipv6_peer_is_an_ipv6_literal() -> None:
    header = received_header(make_session(peer_ip="2001:db8::1"), hostname="mx.test",
                             queue_id="Q5", when=WHEN)
    assert b"([IPv6:2001:db8::1])" in header


def test_helo_protocol_keyword_is_smtp() -> None:
    header = received_header(make_session(esmtp=False), hostname="mx.test", queue_id="Q6",
                             when=WHEN)
    assert b"with SMTP id Q6" in header


def test_the_cached_date_is_format_datetimes_for_every_time_and_zone() -> None:
    # the date is formatted once a second (issue 23): the same text as format_datetime,
    # for repeats, sub-second steps, equal instants in other zones, naive times
    from email.utils import format_datetime

    from postroom.smtp.received import _date
    east = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    times = [WHEN, WHEN.replace(microsecond=999_999), WHEN, WHEN.astimezone(east),
             WHEN + datetime.timedelta(seconds=1), WHEN.replace(tzinfo=None),
             WHEN.astimezone(east), WHEN, WHEN.replace(tzinfo=None)]
    for when in times:
        assert _date(when) == format_datetime(when)
