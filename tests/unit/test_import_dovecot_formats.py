"""What `postroom import dovecot` reads: passwd-file, dovecot-uidlist, dovecot-keywords, UIDLs,
and the Dovecot password schemes (hashes made by Debian's `doveadm pw` where it is installed)."""

from __future__ import annotations

import base64
import hashlib
import subprocess

import pytest

from postroom.auth import dovecotpw, passwords
from postroom.ops.importer import dovecot

# --- passwords


def _ssha512(password: str, salt: bytes) -> str:
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


def test_digest_schemes_match_only_the_right_password() -> None:
    stored = _ssha512("right one", b"saltsalt")
    assert dovecotpw.verify("right one", stored)
    assert not dovecotpw.verify("wrong one", stored)
    md5 = "{PLAIN-MD5}" + hashlib.md5(b"right one").hexdigest()
    assert dovecotpw.verify("right one", md5)
    assert dovecotpw.verify("right one", md5.upper())
    b64 = "{PLAIN-MD5}" + base64.b64encode(hashlib.md5(b"right one").digest()).decode()
    assert dovecotpw.verify("right one", b64)
    assert dovecotpw.verify("right one", "{SSHA512.HEX}" + (
        hashlib.sha512(b"right one" + b"ab").digest() + b"ab").hex())


@pytest.mark.parametrize("stored", [
    "", "{}", "{SSHA512}", "{SSHA512}!!!", "{NOPE}abc", "{SHA512-CRYPT}$6$broken",
    "{BLF-CRYPT}$2y$99$xx", "{ARGON2ID}$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
    "{ARGON2I}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaA", "{PLAIN-MD5}" + "0" * 2000,
    "plain text", "{SHA512-CRYPT}$5$rounds=5000$x$y",
])
def test_malformed_or_unknown_values_never_match_nor_raise(stored: str) -> None:
    assert not dovecotpw.verify("anything", stored)
    assert not passwords.verify_password("anything", stored)


def test_imported_hashes_always_need_rehash_and_plaintext_is_recognised() -> None:
    assert passwords.needs_rehash("{SSHA512}abc")
    assert dovecotpw.is_plaintext("{PLAIN}secret") and dovecotpw.is_plaintext("{CLEAR}x")
    assert not dovecotpw.is_plaintext("{SSHA512}abc")
    assert passwords.verify_password("secret", "{PLAIN}secret")


_SCHEMES = ["SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "ARGON2I", "ARGON2ID", "SSHA512",
            "PLAIN-MD5", "MD5-CRYPT", "CRYPT", "SSHA256", "SSHA", "SMD5", "SHA512", "SHA256",
            "SHA1", "LDAP-MD5"]


@pytest.mark.parametrize("scheme", _SCHEMES)
def test_hashes_doveadm_writes_verify(scheme: str) -> None:
    # Debian's dovecot-core (scripts/ensure-services.sh installs it): the hashes a real server has
    password = "Grüße, 1 über-long-enough pass"
    stored = subprocess.run(["doveadm", "-o", "stats_writer_socket_path=", "pw", "-s", scheme,
                             "-p", password], capture_output=True, text=True, check=True,
                            timeout=60).stdout.strip()
    assert stored.startswith("{" + scheme + "}")
    assert passwords.verify_password(password, stored)
    assert not passwords.verify_password(password + "x", stored)


# --- passwd-file

PASSWD = """\
# Dovecot users
alice@example.org:{SHA512-CRYPT}$6$abc$def:5000:5000::/var/vmail/example.org/alice::
bob:{BLF-CRYPT}$2y$05$abc:5000:5000::/var/vmail/example.org/bob::userdb_mail=maildir:/m/%d/%n
carol@example.org::5000:5000::/var/vmail/c::
dave@example.org:{FANCY}xyz:5000:5000::/home/dave::
erin@example.org:$6$salt$hash:5000:5000::/home/erin::

"""


def test_passwd_file_accounts_and_problems() -> None:
    entries, problems = dovecot.parse_passwd_file(PASSWD, domain="example.org")
    assert [e.address for e in entries] == ["alice@example.org", "bob@example.org",
                                             "erin@example.org"]
    assert entries[0].scheme == "SHA512-CRYPT"
    assert entries[1].extra["userdb_mail"] == "maildir:/m/%d/%n"
    assert entries[2].password == "{CRYPT}$6$salt$hash"  # default_pass_scheme
    assert len(problems) == 2 and "carol" in problems[0] and "dave" in problems[1]
    _, problems = dovecot.parse_passwd_file(PASSWD)
    assert any("'bob' has no domain" in p for p in problems)


def test_maildir_location() -> None:
    entries, _ = dovecot.parse_passwd_file(PASSWD, domain="example.org")
    alice, bob, _erin = entries
    assert dovecot.maildir_of(alice, None) == "/var/vmail/example.org/alice/Maildir"
    assert dovecot.maildir_of(bob, None) == "/m/example.org/bob"
    assert dovecot.maildir_of(alice, "maildir:/import/%d/%n/Maildir:LAYOUT=fs") == \
        "/import/example.org/alice/Maildir"
    assert dovecot.maildir_of(alice, "~/mail") == "/var/vmail/example.org/alice/mail"
    assert dovecot.maildir_of(alice, "mdbox:~/mdbox") is None
    with pytest.raises(dovecot.DovecotFormatError):
        dovecot.maildir_of(alice, "/x/%q")


# --- dovecot-uidlist, dovecot-keywords, file names


def test_uidlist_version_3() -> None:
    data = (b"3 V1796623833 N7 G20367522d94d166b6118000083ecc375\n"
            b"1 :1796623833.M578089P6241.vm,S=42,W=46\n"
            b"4 W22 P0000abcd :1796623833.M756764P6312.vm,S=19,W=22\n"
            b"junk line\n"
            b"99999999999 :too.big\n"
            b"5 :../escape\n")
    found = dovecot.parse_uidlist(data)
    assert (found.uidvalidity, found.nextuid) == (1796623833, 7)
    assert found.entries["1796623833.M578089P6241.vm,S=42,W=46"].uid == 1
    entry = found.entries["1796623833.M756764P6312.vm,S=19,W=22"]
    assert entry.uid == 4 and entry.extensions == {"W": "22", "P": "0000abcd"}
    assert len(found.entries) == 2


def test_uidlist_version_1_and_bad_headers() -> None:
    found = dovecot.parse_uidlist(b"1 1234 3\n1 a.b.c\n2 d.e.f\n")
    assert found.uidvalidity == 1234 and found.entries["d.e.f"].uid == 2
    for bad in (b"", b"3 N5\n", b"2 V1 N1\n", b"3 V0 N1\n", b"3 V1 N99999999999\n"):
        with pytest.raises(dovecot.DovecotFormatError):
            dovecot.parse_uidlist(bad)


def test_keywords_and_flags_of_file_names() -> None:
    keywords = dovecot.parse_keywords(b"0 $Label1\n1 Work\n2 Important\n26 Too-far\n3 bad(kw\n"
                                      b"4 \\Seen\n")
    assert keywords == {0: "$Label1", 1: "Work", 2: "Important"}
    assert dovecot.file_flags("123.M1.vm,S=19,W=22:2,RSac", keywords) == \
        ["\\Answered", "\\Seen", "$Label1", "Important"]
    assert dovecot.file_flags("123.M1.vm,S=19:2,z", keywords) == []
    assert dovecot.file_base("123.M1.vm,S=19,W=22:2,RSac") == "123.M1.vm,S=19,W=22"


def test_uidl_formats_as_dovecot_prints_them() -> None:
    # what Debian's Dovecot 2.3 answered for uid 1 and 2 of UIDVALIDITY 1796623833
    assert dovecot.format_uidl(dovecot.DEFAULT_UIDL_FORMAT, uid=1, uidvalidity=1796623833,
                               filename="f", guid="g") == "000000016b164dd9"
    assert dovecot.format_uidl("%v.%u", uid=2, uidvalidity=9, filename="f", guid="g") == "9.2"
    assert dovecot.format_uidl("%f", uid=2, uidvalidity=9, filename="1.M2.h", guid="g") == "1.M2.h"
    assert dovecot.format_uidl("%{guid}-%08XUu", uid=255, uidvalidity=9, filename="f",
                               guid="g1") == "g1-000000FF"
    with pytest.raises(dovecot.DovecotFormatError):
        dovecot.check_uidl_format("%m")


def test_folder_names_are_modified_utf7_both_ways(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from postroom.ops.importer.export import folder_path
    from postroom.ops.importer.maildir import folder_name

    assert folder_name(".Entw&APw-rfe") == "Entwürfe"
    assert folder_name(".INBOX.Lists.Entw&APw-rfe") == "Lists/Entwürfe"
    assert folder_name(".R&AOk-sum&AOk-s") == "Résumés"
    assert folder_name(".Tom & Jerry") == "Tom & Jerry"  # not modified UTF-7: kept
    assert folder_name(".Entwürfe") == "Entwürfe"  # Dovecot's UTF-8 option
    assert folder_path(tmp_path, "Lists/Entwürfe") == tmp_path / ".Lists.Entw&APw-rfe"
    assert folder_path(tmp_path, "a.b/c") == tmp_path / ".a_b.c"


def test_subscriptions_both_versions() -> None:
    assert dovecot.parse_subscriptions(b"V\t2\n\nLists\tpython\nEntw&APw-rfe\nINBOX\n") == {
        "Lists/python", "Entwürfe", "INBOX"}
    assert dovecot.parse_subscriptions(b"Lists.python\nINBOX.Sent\n") == {"Lists/python", "Sent"}
