"""The script the web's simple editors write, run by the real mda delivery path: a filter
rule files and marks read, and the vacation reply goes out within its dates only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postroom.sieve import check_script
from postroom.sieve.simple import SCRIPT_NAME, Rule, SimpleSettings, Vacation, generate
from postroom.store import sieve
from tests.integration.test_mda_sieve import (  # noqa: F401 -- fixtures db, alice
    alice,
    db,
    deliver,
    folder,
    message,
    outbound,
    stored,
    user_id,
)


def test_a_vacation_and_a_filter_rule_from_the_web_work_at_delivery(db, alice):  # noqa: F811
    today = datetime.now(UTC).date()
    settings = SimpleSettings(
        Vacation(enabled=True, start=today.isoformat(),
                 end=(today + timedelta(days=3)).isoformat(), subject="Away",
                 text="Back next week.", days=7),
        (Rule("subject", "[list]", "fileinto", "Lists"),
         Rule("from", "bob@", "addflag")))
    text = generate(settings)
    assert check_script(text, max_bytes=65536) == []
    uid = user_id(db, "alice@example.test")
    db.run_sync(sieve.put_script, uid, SCRIPT_NAME, text)
    db.run_sync(sieve.set_active, uid, SCRIPT_NAME)
    folder(db, "alice@example.test", "Lists")

    assert deliver(db, message("Subject: [list] weekly", mail_from="carol@remote.test"),
                   mail_from="carol@remote.test").mailbox == "Lists"
    deliver(db, message("Subject: hello"))  # from bob: kept in INBOX, marked read
    assert stored(db, "alice@example.test") == {"INBOX": [["\\Seen"]], "Lists": [[]]}
    replies = outbound(db, "local")
    assert {r[2] for r in replies} == {"bob@remote.test", "carol@remote.test"}
    # after the last day: no reply
    later = datetime.now(UTC) + timedelta(days=10)
    deliver(db, message("Subject: late", mail_from="dave@remote.test"),
            mail_from="dave@remote.test", now=later)
    assert "dave@remote.test" not in {r[2] for r in outbound(db, "local")}
