"""METADATA (RFC 5464) against the live imap service: the RFC's examples, limits, two devices."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from imapclient import IMAPClient

from postroom.store import domains
from postroom.store.db import Database
from tests.integration import test_imap_service as base
from tests.integration.test_imap_qresync import Raw
from tests.integration.test_imap_service import PASSWORD, Account, Server, unverified
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, listener_env, runtime_argv
from tests.support.redisdb import delete_prefix

certs, account = base.certs, base.account


@pytest.fixture(scope="module")
def server(database_url: str, redis_url: str, certs: Path) -> Iterator[Server]:
    """The imap service with small METADATA limits, to reach them in a test."""
    prefix = f"prtest:{secrets.token_hex(6)}:"
    port, tls_port = free_port(), free_port()
    env = listener_env(database_url, redis_url, prefix, certs,
                       imap_listen=port, imap_tls_listen=tls_port)
    env.update({"POSTROOM_IMAP_METADATA_MAX_SIZE": "1024",
                "POSTROOM_IMAP_METADATA_MAX_ENTRIES": "3",
                "POSTROOM_IMAP_METADATA_MAX_TOTAL": "4096"})
    process = ServiceProcess("imap", env, argv=runtime_argv("postroom_imap.main:SERVICE"))
    process.start()
    try:
        yield Server("127.0.0.1", port, tls_port, prefix, f"md{secrets.token_hex(4)}.example",
                     redis_url, process)
    finally:
        process.close()
        client = redis.Redis.from_url(redis_url)
        try:
            delete_prefix(client, prefix)
        finally:
            client.close()


@pytest.fixture(scope="module")
def domain(server: Server, database: Database) -> str:
    database.run_sync(domains.add_domain, server.domain)
    return server.domain


def test_rfc5464_examples_between_two_devices(server: Server, account: Account) -> None:
    phone, laptop = Raw(server, account), Raw(server, account)
    try:
        assert b" METADATA" in b"".join(phone.cmd("CAPABILITY"))
        # 4.3: set a mailbox comment with a literal, and a server comment
        phone.sock.sendall(b"a SETMETADATA INBOX (/private/comment {33}\r\n")
        assert phone.file.readline().startswith(b"+ ")
        phone.sock.sendall(b"My new comment across\r\ntwo lines.)\r\n")
        assert phone.file.readline() == b"a OK SETMETADATA completed\r\n"
        assert phone.cmd('SETMETADATA "" (/shared/comment "Shared comment")')[-1].endswith(
            b"OK SETMETADATA completed\r\n")
        # 4.2: the other device reads them
        assert laptop.cmd('GETMETADATA "" /shared/comment') == [
            b'* METADATA "" (/shared/comment "Shared comment")\r\n',
            b"t2 OK GETMETADATA completed\r\n"]
        assert laptop.cmd("GETMETADATA INBOX /private/comment") == [
            b"* METADATA INBOX (/private/comment {33}\r\n",
            b"My new comment across\r\n",
            b"two lines.)\r\n",
            b"t3 OK GETMETADATA completed\r\n"]
        assert laptop.cmd('GETMETADATA INBOX ("/shared/comment" "/Private/Comment")') == [
            b"* METADATA INBOX (/shared/comment NIL /private/comment {33}\r\n",
            b"My new comment across\r\n",
            b"two lines.)\r\n",
            b"t4 OK GETMETADATA completed\r\n"]
        # 4.2.1: MAXSIZE leaves out what is longer, and tells the longest
        assert laptop.cmd('GETMETADATA INBOX (MAXSIZE 10) ("/shared/comment" '
                          '"/private/comment")') == [
            b"* METADATA INBOX (/shared/comment NIL)\r\n",
            b"t5 OK [METADATA LONGENTRIES 33] GETMETADATA completed\r\n"]
        # 4.2.2: DEPTH
        phone.cmd('SETMETADATA "" (/private/filters/values/small "10" '
                  "/private/filters/values/big/x \"1\")")
        assert laptop.cmd('GETMETADATA (DEPTH 1) "" "/private/filters/values"') == [
            b'* METADATA "" (/private/filters/values/small "10")\r\n',
            b"t6 OK GETMETADATA completed\r\n"]
        assert laptop.cmd('GETMETADATA (DEPTH infinity) "" "/private/filters/values"') == [
            b'* METADATA "" (/private/filters/values/big/x "1" '
            b'/private/filters/values/small "10")\r\n',
            b"t7 OK GETMETADATA completed\r\n"]
        # removal with NIL
        phone.cmd("SETMETADATA INBOX (/private/comment NIL)")
        assert laptop.cmd("GETMETADATA INBOX /private/comment") == [
            b"* METADATA INBOX (/private/comment NIL)\r\n", b"t8 OK GETMETADATA completed\r\n"]
        # follows RENAME, goes with DELETE
        laptop.cmd("CREATE Work")
        laptop.cmd('SETMETADATA Work (/shared/vendor/example/color "blue")')
        laptop.cmd("RENAME Work Jobs")
        assert laptop.cmd("GETMETADATA Jobs /shared/vendor/example/color")[0] == (
            b'* METADATA Jobs (/shared/vendor/example/color "blue")\r\n')
        assert b"NONEXISTENT" in laptop.cmd("GETMETADATA Work /shared/comment")[-1]
    finally:
        phone.close()
        laptop.close()


def test_limits_are_told_with_their_codes(server: Server, account: Account) -> None:
    client = Raw(server, account)
    try:
        assert client.cmd('SETMETADATA "" (/private/comment "%s")' % ("x" * 1025)) == [
            b"t2 NO [METADATA MAXSIZE 1024] metadata value too large\r\n"]
        assert client.cmd('SETMETADATA "" (/private/a "1" /private/b "2" /private/c "3")'
                          )[-1] == b"t3 OK SETMETADATA completed\r\n"
        assert client.cmd('SETMETADATA "" (/private/d "4")')[-1].startswith(
            b"t4 NO [METADATA TOOMANY] ")
        # all or nothing: the refused command changed nothing
        assert client.cmd('GETMETADATA "" /private/d')[0] == (
            b'* METADATA "" (/private/d NIL)\r\n')
        client.cmd("CREATE Big")
        for n, name in enumerate(("INBOX", "Big")):
            big = f'SETMETADATA {name} (/private/a "{"y" * 1000}" /private/b "{"z" * 1000}")'
            assert client.cmd(big)[-1].endswith(
                b"OK SETMETADATA completed\r\n"), n
        assert b"[METADATA TOOMANY]" in client.cmd(
            'SETMETADATA Big (/private/c "%s")' % ("w" * 1000))[-1]  # over 4096 in all
        assert client.cmd('SETMETADATA "" (/other/x "1")')[-1].startswith(b"t10 BAD ")
        assert client.cmd('SETMETADATA Nowhere (/private/x "1")')[-1].startswith(
            b"t11 NO [NONEXISTENT]")
        assert client.cmd("NOOP")[-1] == b"t12 OK NOOP completed\r\n"
    finally:
        client.close()


def test_imapclient_sees_the_capability(server: Server, account: Account) -> None:
    client = IMAPClient(server.host, server.tls_port, ssl=True, ssl_context=unverified())
    try:
        client.login(account.address, PASSWORD)
        assert client.has_capability("METADATA")
    finally:
        client.logout()
