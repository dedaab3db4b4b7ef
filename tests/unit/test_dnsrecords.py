"""The records `postroom dns` and `postroom dkim generate` print."""

from __future__ import annotations

from postroom.mailauth.dnsrecords import all_records, dkim_record, txt_value


def test_a_long_txt_value_is_split_into_255_octet_strings():
    value = txt_value("p=" + "A" * 600)
    strings = [part for part in value.split('"') if part.strip(" ()\n")]
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == "p=" + "A" * 600


def test_a_dkim_record_names_selector_and_key_type():
    line = dkim_record({"domain": "example.org", "selector": "s1", "algorithm": "ed25519-sha256",
                        "public_key_b64": "KEY"})
    assert line == 's1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=KEY"'


def test_every_record_a_domain_needs_is_listed():
    lines = "\n".join(all_records("Example.ORG", "mail.example.org", [
        {"domain": "example.org", "selector": "r1", "algorithm": "rsa-sha256",
         "public_key_b64": "RSAKEY", "active": True},
    ]))
    assert "example.org. IN MX 10 mail.example.org." in lines
    assert '"v=spf1 mx -all"' in lines
    assert "r1._domainkey.example.org. IN TXT" in lines
    assert "_dmarc.example.org. IN TXT" in lines and "rua=mailto:postmaster@example.org" in lines
    assert "_mta-sts.example.org. IN TXT" in lines
    assert "_smtp._tls.example.org. IN TXT" in lines


def test_without_keys_the_output_says_how_to_make_them():
    lines = "\n".join(all_records("example.org", "mx.example.org", []))
    assert "postroom dkim generate example.org" in lines


def test_pending_keys_are_printed_and_retired_ones_named_for_removal():
    key = {"domain": "example.org", "algorithm": "ed25519-sha256", "public_key_b64": "K"}
    lines = "\n".join(all_records("example.org", "mx.example.org", [
        {**key, "selector": "new", "state": "pending"},
        {**key, "selector": "cur", "state": "active"},
        {**key, "selector": "old", "state": "retired"},
    ]))
    assert "; pending: new" in lines
    assert "new._domainkey.example.org. IN TXT" in lines
    assert "cur._domainkey.example.org. IN TXT" in lines
    assert "old._domainkey" not in lines
    assert "then remove them: old" in lines
    assert "postroom dns example.org --check" in lines
