""""Lock the mailbox row, take uidnext, bump modseq" is written once, in the store.

deliver_to_mailbox, imap's APPEND and the mda's fast store all add a mailbox
entry; each is built from ``mailboxes.add_entry_sql`` (STYLE rule 11), and no
other source file advances ``uidnext`` by one on its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from postroom.store import delivery, entries, mailboxes

ROOT = Path(__file__).resolve().parents[2]
# the allocation may raise the counter first (greatest(uidnext, :uid), spelt {taken})
ADD_ONE = re.compile(r"uidnext\s*=\s*(?:uidnext|\{taken\})\s*\+\s*1", re.IGNORECASE)


def test_every_add_entry_statement_is_built_from_the_one_text():
    allocation = mailboxes.add_entry_sql("X", message="X", flags="X", internaldate="X")
    # up to the keyword merge, whose text names the flags parameter
    update = allocation[:allocation.index(", keywords = ")]
    for statement in (mailboxes._ADD_ENTRY, entries._APPEND, delivery._FAST_STORE):
        assert update in statement.prepare_sql
        assert "INSERT INTO mailbox_entries" in statement.prepare_sql


def test_no_other_module_takes_a_uid_by_itself():
    found = [str(path.relative_to(ROOT)) for top in ("shared", "services")
             for path in (ROOT / top).rglob("*.py") if ADD_ONE.search(path.read_text())]
    assert found == ["shared/postroom/store/mailboxes.py"]
