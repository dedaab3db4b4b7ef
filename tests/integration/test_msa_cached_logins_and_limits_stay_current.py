"""The msa's per-message shortcuts keep its rules: login cache, usage read at MAIL, own sender.

A real `postroom serve msa` (the fixtures of test_msa_service.py: real
PostgreSQL and Redis) and smtplib. A successful PLAIN login is cached for
60 s, but any failed login drops the account's entries, so a password
changed in the store is enforced after the next failure; the sending
counters read at MAIL are read again at the next MAIL, so recipients
committed by one message count against the next transaction's RCPTs.
"""

from __future__ import annotations

import smtplib

from postroom.auth.passwords import hash_password
from postroom.store import users
from postroom.store.db import Database
from tests.integration import test_msa_service as svc
from tests.integration.test_msa_service import (
    PASSWORD,
    RECIPIENTS_PER_DAY,
    Account,
    Server,
    loopback_source,
    message,
    send,
    submission,
)

# the msa process, domain and account fixtures of test_msa_service.py (a process of our own)
server = svc.server
domain = svc.domain
account = svc.account


def _login(server: Server, address: str, password: str, source: int) -> int:
    with submission(server, source=loopback_source(source)) as client:
        try:
            code, _reply = client.login(address, password)
        except smtplib.SMTPAuthenticationError as exc:
            code = exc.smtp_code
    return code


def test_a_failed_login_drops_the_cached_one(server: Server, account: Account,
                                            database: Database):
    assert _login(server, account.address, PASSWORD, 4) == 235
    assert _login(server, account.address, PASSWORD, 4) == 235  # from the cache
    database.run_sync(users.set_password, account.address, "a new password here",
                      hash_fn=lambda p: hash_password(p, ln=4))
    assert _login(server, account.address, "a wrong guess", 4) == 535
    # the failure dropped the cached login: the old password is refused (535, or 454 once
    # the failed-login limiter counts this second failure)
    assert _login(server, account.address, PASSWORD, 5) in (535, 454)


def test_recipients_of_a_committed_message_count_at_the_next_mail(server: Server,
                                                                  account: Account):
    first = [f"a{i}@remote.example" for i in range(RECIPIENTS_PER_DAY - 2)]
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        send(client, account.address, first, message(account.address))
        client.mail(account.address)
        codes = [client.rcpt(f"b{i}@remote.example")[0] for i in range(3)]
    assert codes == [250, 250, 450]


def test_own_address_in_any_case_of_the_domain_is_accepted_at_mail(server: Server,
                                                                   account: Account):
    local, _, domain_name = account.address.partition("@")
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        assert client.mail(f"{local}@{domain_name.upper()}")[0] == 250
        client.rset()
        assert client.mail("someone-else@remote.example")[0] == 553


def test_a_local_recipient_is_remembered_briefly_and_an_unknown_one_never(
        server: Server, account: Account, domain: svc.Domain, database: Database):
    other = svc.make_account(database, domain.name)
    newcomer = f"new{other.address}"
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        assert client.mail(account.address)[0] == 250
        assert client.rcpt(other.address)[0] == 250
        assert client.rcpt(newcomer)[0] == 550
        # an account made now is accepted at once: unknown answers are not remembered
        database.run_sync(users.add_user, newcomer, PASSWORD,
                          hash_fn=lambda p: hash_password(p, ln=4))
        assert client.rcpt(newcomer)[0] == 250


def test_messages_another_process_sent_count_at_a_mail_a_second_later(server: Server,
                                                                     account: Account):
    """MAIL answers from the account's last reading for under a second (postroom_msa.limits);
    what another msa process counted meanwhile (here written straight into Redis, as its
    commit's INCRBY does) is enforced at the first MAIL after that second."""
    import time

    import redis

    from postroom_msa.limits import FRESH_SECONDS, SendingLimits

    with submission(server) as client:
        client.login(account.address, PASSWORD)
        send(client, account.address, ["friend@remote.example"], message(account.address))
        # the hour is full now, counted by "another process"
        other = redis.Redis.from_url(server.redis_url)
        try:
            SendingLimits(other, server.prefix, messages_per_hour=1,
                          recipients_per_day=1).record(account.user_id, 0)
            SendingLimits(other, server.prefix, messages_per_hour=1,
                          recipients_per_day=1).record(account.user_id, 0)
        finally:
            other.close()
        time.sleep(FRESH_SECONDS + 0.1)
        code, reply = client.mail(account.address)
    assert code == 450 and reply.startswith(b"4.7.1")
