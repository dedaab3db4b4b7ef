"""Organizational domains by the public suffix list, and the tree walk's query targets."""

from __future__ import annotations

from postroom.mailauth.dmarcdiscovery import Discoverer, walk_targets
from postroom.net.dns import Resolver


def _psl() -> Discoverer:
    # PSL mode never queries DNS for organizational domains; no server is contacted
    return Discoverer(Resolver([("127.0.0.1", 9)], timeout=0.1), "psl")


def test_psl_org_domain_of_subdomain():
    assert _psl().org_domain("a.b.example.com") == "example.com"


def test_psl_org_domain_under_multi_label_suffix():
    assert _psl().org_domain("mail.example.co.uk") == "example.co.uk"


def test_psl_org_domain_of_a_public_suffix_is_itself():
    assert _psl().org_domain("co.uk") == "co.uk"


def test_walk_targets_go_up_to_the_tld():
    assert walk_targets("a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com",
                                               "com"]


def test_walk_targets_of_a_long_name_jump_to_seven_labels():
    targets = walk_targets("1.2.3.4.5.6.7.8.9.example.com")
    assert targets[1] == "5.6.7.8.9.example.com" and len(targets) == 8
