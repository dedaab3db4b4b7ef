"""The dmarc service's cheaper readings give what the full ones gave (issue 23).

:func:`postroom_dmarc.dkimcheck.parse_headers` hands dkimpy the header block only;
the fields, and whether dkimpy refuses them, must be those of the whole message.
The resolver's name normalisation is cached; a name it refuses must still be refused.
"""

from __future__ import annotations

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.net.dns import NXDomain, _normalise
from postroom_dmarc.dkimcheck import parse_headers


def _whole(message: bytes) -> object:
    try:
        headers, _body = dkim.rfc822_parse(message)
    except dkim.DKIMException:
        return None
    except Exception as exc:  # dkimpy's other errors propagate alike
        return type(exc)
    return [(name, value) for name, value in headers]


def _block(message: bytes) -> object:
    try:
        return parse_headers(message)
    except Exception as exc:
        return type(exc)


PIECES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b"From: a@b", b"Subject: x", b"From x",
          b"bad line", b":", b"X-", b"body", b"\r\r\n", b"\n\r\n", b"\xff"]
CASES = [
    b"", b"\r\n", b"\n", b"\r\nFrom: a\r\n\r\nb", b"From: a\r\n\r\n", b"From: a\r\n",
    b"From: a", b"From: a\r\n folded\r\n\r\nbody\r\n\r\nmore: x\r\n",
    b"From: a\n\nbad line in the body\n", b"bad line\r\n\r\n", b"From: a\r\n\r\r\nx",
    b"From: a\n\r\n\r\nx", b"From mbox line\r\nTo: b\r\n\r\n",
    b" leading fold\r\n\r\n",
]


@pytest.mark.parametrize("message", CASES)
def test_the_header_block_reads_as_the_whole_message(message: bytes) -> None:
    assert _block(message) == _whole(message)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_any_message_of_awkward_pieces_reads_alike(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    assert _block(message) == _whole(message)


def test_normalised_names_are_cached_and_refused_names_stay_refused() -> None:
    assert _normalise(" Example.ORG. ") == "example.org."
    assert _normalise(" Example.ORG. ") == "example.org."
    for _ in range(2):
        with pytest.raises(NXDomain):
            _normalise("a" * 64 + ".example")
        with pytest.raises(NXDomain):
            _normalise("...")


def test_the_cached_organizational_domain_is_the_lists() -> None:
    from postroom.mailauth.dmarcdiscovery import psl_org_domain
    for name in ("mail.example.co.uk", "example.com", "a.b.c.example.com", "com", "localhost",
                 "mail.example.co.uk", "xn--bcher-kva.example"):
        assert psl_org_domain(name) == psl_org_domain.__wrapped__(name)
