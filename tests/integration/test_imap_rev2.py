"""ENABLE IMAP4rev2 (RFC 9051): a rev2 session beside a rev1 one on the same mailbox.

Exact server replies: after ``ENABLE IMAP4rev2`` no ``* n RECENT`` and no
``\\Recent`` flag (and no \\Recent taken from rev1 sessions), SEARCH answered
with ``* ESEARCH``, STATUS RECENT refused; the rev1 device keeps RFC 3501 rules.
"""

from __future__ import annotations

from tests.integration import test_imap_service as base
from tests.integration.test_imap_qresync import Raw
from tests.integration.test_imap_service import MESSAGE, Account, Server

certs, server, domain, account = base.certs, base.server, base.domain, base.account


def test_rev2_session_beside_a_rev1_session(server: Server, account: Account) -> None:
    for _ in range(2):
        account.deliver(MESSAGE)
    phone = Raw(server, account)  # IMAP4rev2
    laptop = Raw(server, account)  # IMAP4rev1
    try:
        assert phone.cmd("ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2\r\n",
                                                 phone_tag(phone)
                                                 + b" OK ENABLE completed\r\n"]
        # enabling twice lists nothing new (RFC 5161 3.1)
        assert phone.cmd("ENABLE IMAP4rev2")[0] == b"* ENABLED\r\n"
        selected = phone.cmd("SELECT INBOX")
        assert b"* 2 EXISTS\r\n" in selected
        assert not [line for line in selected if b"RECENT" in line or b"UNSEEN" in line]
        assert selected[-1] == phone_tag(phone) + b" OK [READ-WRITE] SELECT completed\r\n"
        # the rev2 SELECT took nothing: the rev1 device still gets both messages as recent
        got = laptop.cmd("SELECT INBOX")
        assert b"* 2 RECENT\r\n" in got
        assert laptop.cmd("SEARCH RECENT")[0] == b"* SEARCH 1 2\r\n"
        # new mail: EXISTS alone for rev2, EXISTS and RECENT for rev1
        account.deliver(MESSAGE)
        assert phone.cmd("NOOP") == [b"* 3 EXISTS\r\n",
                                     phone_tag(phone) + b" OK NOOP completed\r\n"]
        assert laptop.cmd("NOOP")[:2] == [b"* 3 EXISTS\r\n", b"* 3 RECENT\r\n"]
        # SEARCH without RETURN: ESEARCH (RFC 9051 6.4.4), UID indicator for UID SEARCH
        tag = b"t%d" % (phone.n + 1)
        assert phone.cmd("SEARCH ALL") == [b'* ESEARCH (TAG "' + tag + b'") ALL 1:3\r\n',
                                           tag + b" OK SEARCH completed\r\n"]
        tag = b"t%d" % (phone.n + 1)
        assert phone.cmd("UID SEARCH 2:3")[0] == b'* ESEARCH (TAG "' + tag + b'") UID ALL 2:3\r\n'
        tag = b"t%d" % (phone.n + 1)
        assert phone.cmd("SEARCH DELETED")[0] == b'* ESEARCH (TAG "' + tag + b'")\r\n'
        assert laptop.cmd("SEARCH ALL")[0] == b"* SEARCH 1 2 3\r\n"
        # no \Recent in FETCH for rev2, RFC 3501's for rev1
        assert phone.cmd("FETCH 3 (FLAGS)")[0] == b"* 3 FETCH (FLAGS ())\r\n"
        assert laptop.cmd("FETCH 3 (FLAGS)")[0] == b"* 3 FETCH (FLAGS (\\Recent))\r\n"
        # STATUS RECENT is not IMAP4rev2 (RFC 9051 6.3.11); the other items are
        assert phone.cmd("STATUS INBOX (RECENT)")[-1].startswith(phone_tag(phone) + b" BAD ")
        assert phone.cmd('LIST "" INBOX RETURN (STATUS (RECENT))')[-1].startswith(
            phone_tag(phone) + b" BAD ")
        # SIZE and DELETED, rev2's status items (RFC 9051 6.3.11; SIZE also RFC 8438)
        laptop.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
        assert phone.cmd("STATUS INBOX (MESSAGES SIZE DELETED)")[0] == (
            b"* STATUS INBOX (MESSAGES 3 SIZE %d DELETED 1)\r\n" % (3 * len(MESSAGE)))
        assert laptop.cmd("STATUS INBOX (RECENT)")[0] == b"* STATUS INBOX (RECENT 0)\r\n"
    finally:
        phone.close()
        laptop.close()


def test_enable_imap4rev2_while_selected_drops_recent(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    client = Raw(server, account)
    try:
        assert b"* 1 RECENT\r\n" in client.cmd("SELECT INBOX")
        assert client.cmd("ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
        assert client.cmd("FETCH 1 (FLAGS)")[0] == b"* 1 FETCH (FLAGS ())\r\n"
        # RECENT, NEW and OLD are not rev2 search keys (RFC 9051 6.4.4, section 9): BAD
        for key in ("RECENT", "NEW", "OLD", "NOT (OR RECENT DELETED)"):
            assert client.cmd(f"SEARCH {key}") == [
                phone_tag(client) + b" BAD RECENT, NEW and OLD are not IMAP4rev2 search keys\r\n"]
        assert client.cmd("UID SORT (ARRIVAL) UTF-8 NEW")[-1].startswith(
            phone_tag(client) + b" BAD ")
        account.deliver(MESSAGE)
        assert client.cmd("NOOP")[0] == b"* 2 EXISTS\r\n"
        # SELECT while selected: OK [CLOSED] first (RFC 9051 6.3.2)
        again = client.cmd("SELECT INBOX")
        assert again[0] == b"* OK [CLOSED] previous mailbox closed\r\n"
        assert not [line for line in again if b"RECENT" in line]
    finally:
        client.close()


def phone_tag(client: Raw) -> bytes:
    return b"t%d" % client.n


def test_rev2_mailbox_names_are_utf8_and_select_sends_list(server: Server,
                                                           account: Account) -> None:
    """RFC 9051 5.1: UTF-8 names both ways in a rev2 session, modified UTF-7 in a rev1 one;
    6.3.2: SELECT sends the mailbox's LIST response."""
    phone = Raw(server, account)  # IMAP4rev2
    laptop = Raw(server, account)  # IMAP4rev1
    try:
        # pipelined: the CREATE after ENABLE is read with rev2's rules
        tag = b"t%d" % (phone.n + 1)
        phone.sock.sendall(tag + b" ENABLE IMAP4rev2\r\n" + tag + b"b CREATE \"Tom & Jerry\"\r\n")
        assert phone.file.readline() == b"* ENABLED IMAP4rev2\r\n"
        assert phone.file.readline() == tag + b" OK ENABLE completed\r\n"
        assert phone.file.readline() == tag + b"b OK CREATE completed\r\n"
        assert laptop.cmd('CREATE "&AOk-t&AOk-"')[-1].endswith(b"OK CREATE completed\r\n")
        assert phone.cmd('CREATE "Entw\u00fcrfe"')[-1].endswith(b"OK CREATE completed\r\n")
        assert phone.cmd('LIST "" "Tom*"')[0] == b'* LIST (\\HasNoChildren) "/" "Tom & Jerry"\r\n'
        assert laptop.cmd('LIST "" "Tom*"')[0] == b'* LIST (\\HasNoChildren) "/" "Tom &- Jerry"\r\n'
        assert phone.cmd('LIST "" "\u00e9t\u00e9"')[0] == (
            '* LIST (\\HasNoChildren) "/" "\u00e9t\u00e9"\r\n'.encode())
        assert laptop.cmd('LIST "" Entw*')[0] == b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe\r\n'
        assert phone.cmd('STATUS "Entw\u00fcrfe" (MESSAGES)')[0] == (
            '* STATUS "Entw\u00fcrfe" (MESSAGES 0)\r\n'.encode())
        # an ASCII name is taken as it is, not as modified UTF-7
        assert phone.cmd('SELECT "&AOk-"')[-1].startswith(phone_tag(phone) + b" NO ")
        selected = phone.cmd('SELECT "\u00e9t\u00e9"')
        assert '* LIST (\\HasNoChildren) "/" "\u00e9t\u00e9"\r\n'.encode() in selected
        assert selected[-1] == phone_tag(phone) + b" OK [READ-WRITE] SELECT completed\r\n"
        assert b'* LIST (\\HasNoChildren) "/" INBOX\r\n' in phone.cmd("SELECT INBOX")
    finally:
        phone.close()
        laptop.close()


def test_rev2_rename_and_normalized_create_tell_oldname(server: Server,
                                                      account: Account) -> None:
    """RFC 9051 6.3.6 and 6.3.9.7: after RENAME a rev2 session gets the mailbox's LIST with
    OLDNAME; 6.3.4: a name sent denormalized is created in NFC and told the same way.
    A rev1 session gets neither, and keeps its names as sent."""
    phone = Raw(server, account)  # IMAP4rev2
    laptop = Raw(server, account)  # IMAP4rev1
    try:
        phone.cmd("ENABLE IMAP4rev2")
        phone.cmd("CREATE Projects/2025")
        assert phone.cmd("RENAME Projects Archive-Projects") == [
            b'* LIST (\\HasChildren \\Subscribed) "/" Archive-Projects ("OLDNAME" (Projects))\r\n',
            phone_tag(phone) + b" OK RENAME completed\r\n"]
        phone.cmd("UNSUBSCRIBE Archive-Projects/2025")
        assert phone.cmd('RENAME Archive-Projects/2025 "Old 2025"') == [
            b'* LIST (\\HasNoChildren) "/" "Old 2025" ("OLDNAME" (Archive-Projects/2025))\r\n',
            phone_tag(phone) + b" OK RENAME completed\r\n"]
        # "e" + COMBINING ACUTE ACCENT: stored as U+00E9, the client told which name it got
        decomposed = "Caf" + "e\u0301"
        assert phone.cmd(f'CREATE "{decomposed}"') == [
            f'* LIST (\\HasNoChildren \\Subscribed) "/" "Caf\u00e9" ("OLDNAME" ("{decomposed}"))'
            '\r\n'.encode(), phone_tag(phone) + b" OK CREATE completed\r\n"]
        assert phone.cmd('LIST "" "Caf*"')[0] == (
            '* LIST (\\HasNoChildren) "/" "Caf\u00e9"\r\n'.encode())
        assert phone.cmd(f'RENAME "Caf\u00e9" "T{decomposed}"')[0] == (
            '* LIST (\\HasNoChildren \\Subscribed) "/" "TCaf\u00e9" ("OLDNAME" ("Caf\u00e9"))'
            '\r\n'.encode())
        # RENAME INBOX: INBOX stays (RFC 9051 6.3.6), no LIST for it
        assert phone.cmd("RENAME INBOX Saved") == [phone_tag(phone) + b" OK RENAME completed\r\n"]
        # rev1: no unsolicited LIST, and the name is kept as sent (modified UTF-7 of e + U+0301)
        assert laptop.cmd("RENAME Saved Saved2") == [
            phone_tag(laptop) + b" OK RENAME completed\r\n"]
        assert laptop.cmd('CREATE "Cafe&AwE-"') == [phone_tag(laptop) + b" OK CREATE completed\r\n"]
        assert laptop.cmd('LIST "" "Cafe*"')[0] == b'* LIST (\\HasNoChildren) "/" Cafe&AwE-\r\n'
    finally:
        phone.close()
        laptop.close()


def test_capability_lists_imap4rev2_beside_imap4rev1(server: Server, account: Account) -> None:
    client = Raw(server, account)
    try:
        caps = client.cmd("CAPABILITY")[0]
        assert caps.startswith(b"* CAPABILITY IMAP4rev1 IMAP4rev2 ")
        for cap in (b"ESEARCH", b"SEARCHRES", b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE",
                    b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"SPECIAL-USE", b"ENABLE",
                    b"IDLE", b"SASL-IR", b"BINARY", b"CHILDREN", b"LITERAL+"):
            assert b" " + cap + b" " in caps.replace(b"\r\n", b" ")
    finally:
        client.close()
