"""SPF evaluation edge cases that need no DNS answer at all."""

from __future__ import annotations

from postroom.net.dns import Resolver
from postroom_dmarc import spfcheck

# nothing listens on the discard port; these cases must not need an answer
NO_DNS = Resolver([("127.0.0.1", 9)], timeout=0.2)


def test_invalid_client_address_is_permerror():
    assert spfcheck.check("not-an-ip", "a@example.com", "helo.example", NO_DNS).result == (
        "permerror")


def test_null_sender_checks_the_helo_identity():
    result = spfcheck.check("192.0.2.1", "", "[192.0.2.1]", NO_DNS)
    assert (result.identity, result.result) == ("helo", "none")


def test_domain_with_an_overlong_label_is_none():
    result = spfcheck.check("192.0.2.1", "a@" + "x" * 64 + ".example.com", "h.example", NO_DNS)
    assert result.result == "none"


def test_single_label_helo_is_none_without_a_lookup():
    assert spfcheck.check("192.0.2.1", "", "OEMCOMPUTER", NO_DNS).result == "none"
