"""Mail Postroom writes or forwards itself, between two whole instances (issue 21).

one.test (127.0.0.2) and two.test (127.0.0.3) publish MX, SPF, DKIM and
DMARC p=reject (two.test with ``rua=mailto:`` one of its accounts); both have
an SRS key, and one.test sends DMARC aggregate reports every few seconds. What
arrives at two.test is judged by two.test's own dmarc service, whose
Authentication-Results the tests read:

* a DSN bounce, a vacation reply and a DMARC aggregate report written by
  one.test arrive with dkim=pass and dmarc=pass (postroom.outgoing.originate);
* a message from two.test forwarded by an alias of one.test back to two.test
  arrives with spf=pass for one.test's SRS address, dmarc=pass and an ARC set
  that dkimpy's arc_verify accepts (postroom.outgoing.forward);
* bounces to one.test's SRS addresses reach the original sender, whether one.test
  makes the bounce itself or another server sends it to port 25.
"""

from __future__ import annotations

import email
import secrets
import smtplib
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import dkim
import pytest

from postroom.mailauth import srs
from postroom.store import aliases, sieve, users
from tests.support.dns import DNSServer
from tests.support.instance import (
    Instance,
    authentication_results,
    fresh_user,
    methods,
    shared_free_port,
)

pytestmark = pytest.mark.slow

ONE, TWO = "127.0.0.2", "127.0.0.3"
REPORT_INTERVAL = 20  # seconds: one.test's aggregate report period


class Pair:
    def __init__(self, one: Instance, two: Instance, srs_key_file: Path) -> None:
        self.one = one
        self.two = two
        self.srs_key_file = srs_key_file
        self.reports_to = ""


def set_sieve(session: Any, address: str, text: str) -> None:
    """Make ``text`` the active Sieve script of ``address``."""
    found = users.get_user(session, address)
    assert found is not None
    user_id = found.id
    sieve.put_script(session, user_id, "main", text)
    sieve.set_active(session, user_id, "main")


@pytest.fixture(scope="module")
def pair(redis_url: str, dns_server_session: DNSServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    port = shared_free_port(ONE, TWO)
    base = tmp_path_factory.mktemp("originated")
    keys = {name: base / f"{name}-srs.keys" for name in ("one", "two")}
    for path in keys.values():
        srs.write_key_file(str(path))
    one_env = {"POSTROOM_SRS_KEY_FILE": str(keys["one"]), "POSTROOM_DMARC_REPORTS": "true",
               "POSTROOM_DMARC_REPORT_INTERVAL": f"{REPORT_INTERVAL}s"}
    with Instance("one.test", ONE, redis_url, base / "one", smtp_port=port,
                  dns=dns_server_session, env=one_env) as one, \
         Instance("two.test", TWO, redis_url, base / "two", smtp_port=port,
                  dns=dns_server_session,
                  env={"POSTROOM_SRS_KEY_FILE": str(keys["two"])}) as two:
        one.spawn()
        two.spawn()
        one.setup_domain()
        two.setup_domain()
        one.wait()
        two.wait()
        made = Pair(one, two, keys["one"])
        made.reports_to = fresh_user(two, "dmarc")
        yield made


@pytest.fixture(autouse=True)
def zones(pair: Pair, dns_server: DNSServer) -> Pair:
    """Both domains' records, republished for each test (the fixture empties the server)."""
    pair.one.publish("p=reject")
    pair.two.publish(f"p=reject; rua=mailto:{pair.reports_to}")
    return pair


def parse(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=policy.compat32)


def results_of(raw: bytes, instance: Instance) -> dict[str, list[str]]:
    """The methods of the receiving instance's own Authentication-Results field."""
    ours = [value for ident, value in authentication_results(raw) if ident == instance.hostname]
    assert len(ours) == 1, authentication_results(raw)
    return methods(ours[0])


def assert_signed_and_aligned(raw: bytes, receiver: Instance) -> dict[str, list[str]]:
    found = results_of(raw, receiver)
    assert found.get("dkim") and set(found["dkim"]) == {"pass"}, found  # RSA and ed25519
    assert len(found["dkim"]) == 2, found
    assert found.get("dmarc") == ["pass"], found
    return found


def wait_for(instance: Instance, user: str, predicate: Any, timeout: float = 60.0) -> bytes:
    """The first message in ``user``'s INBOX that ``predicate`` accepts (polled over IMAP)."""
    deadline = time.monotonic() + timeout
    while True:
        for raw in instance.fetch_all(user):
            if predicate(parse(raw)):
                return raw
        assert time.monotonic() < deadline, f"nothing arrived for {user}"
        time.sleep(0.3)


def counted(instance: Instance, service: str, **labels: str) -> float:
    """postroom_outgoing_total{labels} on ``service``'s /metrics (0 when absent)."""
    _status, body = instance.processes[service].get("/metrics")
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in body.decode().splitlines():
        if line.startswith(f"postroom_outgoing_total{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def dns_txt(*instances: Instance) -> Any:
    """A dkimpy ``dnsfunc`` answering from the instances' published records."""
    zone: dict[str, Any] = {}
    for instance in instances:
        zone.update(instance.dns_records())

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        records = zone.get(name.decode().rstrip(".").lower(), {}).get("TXT", [])
        return str(records[0]).encode() if records else b""

    return lookup


def test_a_forward_by_alias_passes_spf_with_srs_dmarc_and_carries_a_valid_arc_seal(
        pair: Pair) -> None:
    carol, dave = fresh_user(pair.two, "carol"), fresh_user(pair.two, "dave")
    alias = f"fwd-{secrets.token_hex(3)}@{pair.one.domain}"
    pair.one.db.run_sync(aliases.add_alias, alias, dave)
    subject = f"forwarded {secrets.token_hex(4)}"
    pair.two.submit(carol, [alias], (f"From: Carol <{carol}>\r\nTo: <{alias}>\r\n"
                                     f"Subject: {subject}\r\n\r\nvia one.test\r\n").encode())
    raw = wait_for(pair.two, dave, lambda m: m["Subject"] == subject)
    found = results_of(raw, pair.two)
    ours = next(v for i, v in authentication_results(raw) if i == pair.two.hostname)
    # SPF judged one.test's SRS address (two.test's own -all would have failed 127.0.0.2)
    assert found.get("spf") and set(found["spf"]) == {"pass"}, ours
    assert "smtp.mailfrom=srs0=" in ours.lower() and f"@{pair.one.domain}" in ours.lower()
    assert found.get("dmarc") == ["pass"], ours
    assert found.get("arc") == ["pass"], ours
    cv, sets, why = dkim.arc_verify(raw, dnsfunc=dns_txt(pair.one, pair.two))
    assert cv == b"pass", (why, sets)
    assert [s["as-domain"] for s in sets] == [pair.one.domain.encode()]
    # what one.test saw (dkim and dmarc pass for two.test) travels in the seal
    aar = parse(raw)["ARC-Authentication-Results"]
    assert pair.one.hostname in aar and "dmarc=pass" in aar
    assert counted(pair.one, "mda", kind="forward", result="sealed") >= 1


def test_a_sieve_redirect_off_our_domains_goes_with_srs_and_a_valid_arc_seal(
        pair: Pair) -> None:
    carol, dave = fresh_user(pair.two, "carol"), fresh_user(pair.two, "dave")
    bob = fresh_user(pair.one, "bob")
    pair.one.db.run_sync(set_sieve, bob, f'redirect "{dave}";\n')
    subject = f"redirected {secrets.token_hex(4)}"
    pair.two.submit(carol, [bob], (f"From: Carol <{carol}>\r\nTo: <{bob}>\r\n"
                                   f"Subject: {subject}\r\n\r\nvia bob's script\r\n").encode())
    raw = wait_for(pair.two, dave, lambda m: m["Subject"] == subject)
    found = results_of(raw, pair.two)
    ours = next(v for i, v in authentication_results(raw) if i == pair.two.hostname)
    assert found.get("spf") and set(found["spf"]) == {"pass"}, ours
    assert "smtp.mailfrom=srs0=" in ours.lower() and f"@{pair.one.domain}" in ours.lower()
    assert found.get("dmarc") == ["pass"], ours
    assert found.get("arc") == ["pass"], ours
    cv, sets, why = dkim.arc_verify(raw, dnsfunc=dns_txt(pair.one, pair.two))
    assert cv == b"pass", (why, sets)


def test_a_bounce_of_a_forward_reaches_the_original_sender_signed_by_the_forwarder(
        pair: Pair) -> None:
    carol = fresh_user(pair.two, "carol")
    alias = f"gone-{secrets.token_hex(3)}@{pair.one.domain}"
    pair.one.db.run_sync(aliases.add_alias, alias, f"nobody-{secrets.token_hex(3)}@two.test")
    subject = f"to nobody {secrets.token_hex(4)}"
    pair.two.submit(carol, [alias], (f"From: <{carol}>\r\nTo: <{alias}>\r\n"
                                     f"Subject: {subject}\r\n\r\nhello?\r\n").encode())
    raw = wait_for(pair.two, carol, lambda m: "Undelivered" in str(m["Subject"]))
    dsn = parse(raw)
    assert dsn["From"] == f"Mail Delivery System <MAILER-DAEMON@{pair.one.hostname}>"
    assert subject in raw.decode(errors="replace")  # the returned message is attached
    assert_signed_and_aligned(raw, pair.two)
    # the copy left one.test from its SRS address, and the DSN went to carol through it
    senders = [row[0] for row in pair.one.query(
        "SELECT mail_from FROM spool_messages WHERE mail_from ILIKE 'SRS0=%'")]
    assert any(sender.lower().endswith(f"@{pair.one.domain}") for sender in senders)
    [to] = [row[0] for row in pair.one.query(
        "SELECT r.address FROM spool_recipients r JOIN spool_messages m"
        " ON m.id = r.spool_message_id WHERE m.kind = 'bounce'"
        " AND r.address = :carol", carol=carol)]
    assert to == carol
    assert counted(pair.one, "mta", kind="dsn", result="signed") >= 1


def test_a_vacation_reply_arrives_signed_for_the_account_domain(pair: Pair) -> None:
    bob, carol = fresh_user(pair.one, "bob"), fresh_user(pair.two, "carol")
    pair.one.db.run_sync(set_sieve, bob, 'require "vacation";\n'
                         'vacation :days 1 :subject "Out of office" "Away until Monday";\n')
    pair.two.submit(carol, [bob], (f"From: <{carol}>\r\nTo: <{bob}>\r\n"
                                   "Subject: are you there\r\n\r\nping\r\n").encode())
    raw = wait_for(pair.two, carol, lambda m: m["Subject"] == "Out of office")
    reply = parse(raw)
    assert reply["From"] == bob and reply["Auto-Submitted"].startswith("auto-replied")
    assert_signed_and_aligned(raw, pair.two)


def test_a_dmarc_aggregate_report_arrives_signed_and_aligned(pair: Pair) -> None:
    """one.test has judged mail from two.test (the tests above, and this one's message);
    at the end of the period its report goes to two.test's rua address."""
    carol, bob = fresh_user(pair.two, "carol"), fresh_user(pair.one, "bob")
    pair.two.submit(carol, [bob], (f"From: <{carol}>\r\nTo: <{bob}>\r\n"
                                   "Subject: for the report\r\n\r\ncount me\r\n").encode())
    pair.one.wait_for_mail(bob)
    raw = wait_for(pair.two, pair.reports_to,
                   lambda m: "Report Domain: two.test" in str(m["Subject"]),
                   timeout=3 * REPORT_INTERVAL + 30)
    report = parse(raw)
    assert pair.one.hostname in str(report["From"])
    assert_signed_and_aligned(raw, pair.two)


def test_a_bounce_sent_to_our_srs_address_reaches_the_original_sender(pair: Pair) -> None:
    carol = fresh_user(pair.two, "carol")
    rewriter = srs.SRS(srs.load_keys(str(pair.srs_key_file)))
    address = rewriter.forward(carol, pair.one.domain)
    subject = f"remote bounce {secrets.token_hex(4)}"
    client = pair.one.smtp(source=TWO)
    try:
        client.ehlo(pair.two.hostname)
        # a forged or stale SRS address is refused at RCPT, never relayed
        forged = address.replace(carol.split("@")[0], "mallory")
        client.mail("<>")
        code, _reply = client.rcpt(forged)
        assert code == 550
        client.rset()
        client.mail("<>")
        code, reply = client.rcpt(address)
        assert code == 250, reply
        code, reply = client.data((
            "From: Mail Delivery System <mailer-daemon@elsewhere.test>\r\n"
            f"To: <{address}>\r\nSubject: {subject}\r\nAuto-Submitted: auto-replied\r\n"
            "\r\nYour message could not be delivered.\r\n").encode())
        assert code == 250, reply
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            pass
    raw = wait_for(pair.two, carol, lambda m: m["Subject"] == subject)
    assert parse(raw)["To"] == f"<{address}>"
