"""The Received: trace header (RFC 5321 section 4.4) prepended to each accepted message."""

from __future__ import annotations

import datetime
import functools
import ipaddress
from collections.abc import Sequence
from email.utils import format_datetime

from postroom.smtp.grammar import Address
from postroom.smtp.session import Session


@functools.lru_cache(maxsize=4096)
def _address_literal(ip: str) -> str:
    # a pure function of the peer's address, asked for every message: busy peers repeat
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return f"[{ip}]" if ip else "[unknown]"
    return f"[IPv6:{parsed.compressed}]" if parsed.version == 6 else f"[{parsed}]"


def _date(when: datetime.datetime) -> str:
    """``format_datetime(when)``: it shows whole seconds, so a busy server formats one a
    second (the email package's formatting was a percent of the mta's CPU per message).

    The key holds the offset too: equal instants in two zones compare equal but read apart.
    """
    global _last_date
    key = (when.replace(microsecond=0), when.utcoffset())
    cached = _last_date  # one tuple, replaced whole: safe to read from any thread
    if cached[0] == key:
        return cached[1]
    text = format_datetime(key[0])
    _last_date = (key, text)
    return text


_last_date: tuple[object, str] = (None, "")


def received_header(session: Session, *, hostname: str, queue_id: str,
                    recipients: Sequence[Address] = (), smtputf8: bool = False,
                    when: datetime.datetime | None = None) -> bytes:
    """``Received: from HELO (RDNS [IP]) (using TLS...) by HOST (Postroom) with ESMTPSA id ID
    for <rcpt>; date``, folded, ending in CRLF.

    ``for`` is given only for a single recipient: listing several would disclose
    Bcc recipients to each other.
    """
    when = when or datetime.datetime.now(datetime.UTC)
    helo = session.helo or "unknown"
    peer = _address_literal(session.peer_ip)
    peer_part = f"({session.peer_name} {peer})" if session.peer_name else f"({peer})"
    lines = [f"Received: from {helo} {peer_part}"]
    if session.tls is not None:
        lines.append(f"\t{session.tls.received_clause()}")
    by = f"\tby {hostname} (Postroom) with {session.protocol_name(smtputf8)} id {queue_id}"
    lines.append(by)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>")
    lines[-1] += f"; {_date(when)}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
