"""LIST-EXTENDED and LIST-STATUS against the live imap service, from two connections."""

from __future__ import annotations

import imaplib

from postroom.store.db import Database
from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import MESSAGE, Account, Server, imaps

certs, server, domain, account = base.certs, base.server, base.domain, base.account


def _lines(client: imaplib.IMAP4, tag_line: str) -> list[bytes]:
    typ, data = client._simple_command(*tag_line.split(" ", 1))
    assert typ == "OK", data
    found = client.untagged_responses.pop("LIST", []) + [
        b"STATUS " + s for s in client.untagged_responses.pop("STATUS", [])]
    return [f for f in found if isinstance(f, bytes)]


def test_subscriptions_from_one_device_reach_list_extended_and_status_on_another(
        server: Server, account: Account, database: Database) -> None:
    phone, laptop = imaps(server, account), imaps(server, account)
    try:
        assert "LIST-EXTENDED" in laptop.capabilities and "LIST-STATUS" in laptop.capabilities
        for name in ("Fruit/Apple", "Fruit/Banana", "Vegetable/Broccoli"):
            assert phone.create(name)[0] == "OK"
        phone.unsubscribe("Fruit")  # CREATE subscribes each mailbox it makes
        phone.unsubscribe("Fruit/Apple")
        account.deliver(MESSAGE, "Fruit/Banana")
        got = _lines(laptop, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "Fruit" RETURN (CHILDREN)')
        assert got == [b'(\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))']
        got = _lines(laptop, 'LIST (SUBSCRIBED) "" "V*"')
        assert got == [b'(\\Subscribed \\HasChildren) "/" Vegetable',
                       b'(\\Subscribed \\HasNoChildren) "/" Vegetable/Broccoli']
        typ, _ = laptop._simple_command(
            "LIST", '"" "Fruit/%" RETURN (STATUS (MESSAGES UNSEEN))')
        assert typ == "OK"
        assert laptop.untagged_responses.pop("STATUS") == [
            b"Fruit/Apple (MESSAGES 0 UNSEEN 0)", b"Fruit/Banana (MESSAGES 1 UNSEEN 1)"]
        laptop.untagged_responses.clear()
        typ, _ = laptop._simple_command("LIST", '(RECURSIVEMATCH) "" "*"')
        assert typ == "BAD"
    except imaplib.IMAP4.error as exc:  # imaplib raises on BAD
        assert "RECURSIVEMATCH" in str(exc)
        assert laptop.noop()[0] == "OK"
    finally:
        phone.logout()
        laptop.logout()
