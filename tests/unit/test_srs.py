"""SRS0/SRS1 addresses (postroom.mailauth.srs): round trips, expiry, tampering, case, rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from postroom.mailauth import srs
from postroom.mailauth.srs import SRS, SRSError

NOW = 1_765_000_000.0  # a fixed day
DAY = 86400.0
KEY = b"first secret"


def rewriter(*keys: bytes, max_age: int = 21) -> SRS:
    return SRS(keys or (KEY,), max_age_days=max_age)


def test_srs0_round_trip_gives_the_original_sender_back() -> None:
    address = rewriter().forward("alice@example.org", "fwd.test", now=NOW)
    assert address.startswith("SRS0=") and address.endswith("@fwd.test")
    assert rewriter().reverse(address, now=NOW) == "alice@example.org"


def test_srs0_layout_and_hash_are_libsrs2s() -> None:
    address = rewriter().forward("alice@example.org", "fwd.test", now=NOW)
    local = address.rpartition("@")[0]
    _tag, hashed, stamp, domain, user = local.split("=")
    assert (domain, user, stamp) == ("example.org", "alice", srs.timestamp(NOW))
    mac = hmac.new(KEY, (stamp + "example.org" + "alice").lower().encode(), hashlib.sha1)
    assert hashed == base64.b64encode(mac.digest()).decode()[:4]


def test_a_local_part_with_equals_signs_survives() -> None:
    address = rewriter().forward("a=b=c@example.org", "fwd.test", now=NOW)
    assert rewriter().reverse(address, now=NOW) == "a=b=c@example.org"


def test_null_sender_and_own_domain_are_not_rewritten() -> None:
    assert rewriter().forward("", "fwd.test") == ""
    assert rewriter().forward("bob@FWD.test", "fwd.test") == "bob@FWD.test"


def test_an_address_older_than_max_age_is_refused() -> None:
    address = rewriter().forward("alice@example.org", "fwd.test", now=NOW)
    assert rewriter().reverse(address, now=NOW + 21 * DAY) == "alice@example.org"
    with pytest.raises(SRSError, match="expired"):
        rewriter().reverse(address, now=NOW + 22 * DAY)


def test_timestamps_wrap_at_1024_days() -> None:
    address = rewriter().forward("alice@example.org", "fwd.test", now=NOW)
    assert rewriter().reverse(address, now=NOW + 1024 * DAY) == "alice@example.org"


@pytest.mark.parametrize("change", [
    lambda a: a.replace("alice", "mallory"),
    lambda a: a.replace("example.org", "evil.test"),
    lambda a: a.replace("SRS0=", "SRS0=X", 1),
])
def test_a_tampered_address_is_refused(change: object) -> None:
    address = rewriter().forward("alice@example.org", "fwd.test", now=NOW)
    assert callable(change)
    with pytest.raises(SRSError):
        rewriter().reverse(change(address), now=NOW)


def test_a_changed_timestamp_breaks_the_hash() -> None:
    address = rewriter().forward("alice@example.org", "fwd.test", now=NOW)
    local, _at, domain = address.rpartition("@")
    tag, hashed, _stamp, rest = local.split("=", 3)
    other = srs.timestamp(NOW - DAY)
    with pytest.raises(SRSError, match="hash"):
        rewriter().reverse(f"{tag}={hashed}={other}={rest}@{domain}", now=NOW)


def test_decoding_is_case_insensitive() -> None:
    address = rewriter().forward("Alice@Example.org", "fwd.test", now=NOW)
    assert rewriter().reverse(address.upper(), now=NOW) == "ALICE@EXAMPLE.ORG"
    assert rewriter().reverse(address.lower(), now=NOW) == "alice@example.org"


def test_an_address_signed_by_another_key_is_refused() -> None:
    address = rewriter(b"someone else").forward("alice@example.org", "fwd.test", now=NOW)
    with pytest.raises(SRSError, match="hash"):
        rewriter().reverse(address, now=NOW)


def test_rotation_first_key_signs_every_key_verifies() -> None:
    old = rewriter(b"old").forward("alice@example.org", "fwd.test", now=NOW)
    rotated = rewriter(b"new", b"old")
    assert rotated.reverse(old, now=NOW) == "alice@example.org"
    new = rotated.forward("alice@example.org", "fwd.test", now=NOW)
    assert new != old
    with pytest.raises(SRSError):
        rewriter(b"old").reverse(new, now=NOW)


def test_srs1_from_srs0_names_the_first_forwarder_and_reverses_to_its_srs0() -> None:
    first = rewriter(b"first").forward("alice@example.org", "first.test", now=NOW)
    second = rewriter(b"second").forward(first, "second.test", now=NOW)
    assert second.startswith("SRS1=") and "=first.test==" in second
    assert second.endswith("@second.test")
    back = rewriter(b"second").reverse(second, now=NOW)
    assert back == first
    assert rewriter(b"first").reverse(back, now=NOW) == "alice@example.org"


def test_srs1_forwarded_again_keeps_the_first_forwarder() -> None:
    first = rewriter(b"first").forward("alice@example.org", "first.test", now=NOW)
    second = rewriter(b"second").forward(first, "second.test", now=NOW)
    third = rewriter(b"third").forward(second, "third.test", now=NOW)
    assert "=first.test==" in third and third.endswith("@third.test")
    assert rewriter(b"third").reverse(third, now=NOW) == first


def test_a_tampered_srs1_is_refused() -> None:
    first = rewriter(b"first").forward("alice@example.org", "first.test", now=NOW)
    second = rewriter(b"second").forward(first, "second.test", now=NOW)
    with pytest.raises(SRSError):
        rewriter(b"second").reverse(second.replace("first.test", "evil.test"), now=NOW)


@pytest.mark.parametrize("address", ["alice@example.org", "SRS0=abc@x.test", "SRS0=@x.test",
                                     "SRS1=a=b@x.test", "SRS2=a=b=c=d@x.test", "nobody",
                                     "SRS0=" + "a" * 600 + "@x.test"])
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(SRSError):
        rewriter().reverse(address, now=NOW)


def test_is_srs_recognises_both_kinds_in_any_case() -> None:
    assert srs.is_srs("srs0=a=b=c=d@x.test") and srs.is_srs("SRS1+x@x.test")
    assert not srs.is_srs("srs@x.test") and not srs.is_srs("srs0x@x.test")


def test_key_file_first_line_signs_and_comments_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "srs.keys"
    path.write_bytes(b"# rotated 2026-12\nnew\n\nold\n")
    assert srs.load_keys(str(path)) == (b"new", b"old")
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n# nothing\n")
    with pytest.raises(ValueError, match="no SRS key"):
        srs.load_keys(str(empty))


def test_write_key_file_puts_the_new_key_first_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "srs.keys"
    key = srs.write_key_file(str(path), [b"older"])
    assert srs.load_keys(str(path)) == (key, b"older")
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        srs.write_key_file(str(path))
