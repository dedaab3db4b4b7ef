"""The Swarm round trip's mail client, run in a container on the stack's network.

``python /mail_client.py USER PASSWORD TAG COUNT``: COUNT messages to the mta (port 25,
plain) and one through the msa (587, STARTTLS + AUTH), then waits up to 120 s until
IMAPS (993) shows every one, and prints {message-id: times found} as JSON. Services are
reached by their Swarm names, each resolving to its tasks (deploy/swarm.py: dnsrr).
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import ssl
import sys
import time


def count(user: str, password: str, ids: list[str], context: ssl.SSLContext) -> dict[str, int]:
    imap = imaplib.IMAP4_SSL("imap", 993, ssl_context=context, timeout=30)
    try:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        found = {}
        for msgid in ids:
            _, data = imap.search(None, "HEADER", "Message-ID", f"<{msgid}>")
            found[msgid] = len(data[0].split())
        return found
    finally:
        imap.logout()


def main() -> int:
    user, password, tag, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ids = [f"{tag}-{i}@remote.test" for i in range(total)]
    for msgid in ids:
        with smtplib.SMTP("mta", 25, timeout=30) as smtp:
            smtp.sendmail("bob@remote.test", [user],
                          f"From: bob@remote.test\r\nTo: {user}\r\nSubject: {tag}\r\n"
                          f"Message-ID: <{msgid}>\r\n\r\nswarm\r\n")
    submitted = f"{tag}-sub@{user.split('@')[1]}"
    ids.append(submitted)
    with smtplib.SMTP("msa", 587, timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login(user, password)
        smtp.sendmail(user, [user], f"From: {user}\r\nTo: {user}\r\nSubject: {tag}\r\n"
                                    f"Message-ID: <{submitted}>\r\n\r\nswarm\r\n")
    deadline = time.monotonic() + 120
    counts: dict[str, int] = {}
    settled = False
    while time.monotonic() < deadline:
        counts = count(user, password, ids, context)
        if all(counts.values()):
            if settled:
                break
            settled = True  # count once more after a pause: a duplicate would show now
            time.sleep(3)
            continue
        time.sleep(1)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
