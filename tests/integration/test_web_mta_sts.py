"""The MTA-STS mode through the API, the policy it serves, and the ACME challenge route."""

from __future__ import annotations

import pytest

from postroom.mailauth.mtasts import policy_id
from postroom.store import acme, mtasts
from tests.support.web import HOSTNAME, WebServer

pytestmark = pytest.mark.slow


def test_a_manager_sets_its_domains_mode_and_gets_the_id_to_publish(web: WebServer) -> None:
    boss = web.client()
    boss.login(web.manager)
    reply = boss.api("PATCH", f"/domains/{web.managed}", {"mta_sts_mode": "testing"})
    assert reply.status == 200, reply.body
    sts = web.db.run_sync(mtasts.get_setting, web.managed)
    assert reply.json() == {"name": web.managed, "mta_sts_mode": "testing",
                            "mta_sts_id": policy_id(sts.stamp, "testing", [HOSTNAME])}
    assert boss.api("PATCH", f"/domains/{web.other}", {"mta_sts_mode": "enforce"}).status == 403
    assert boss.api("PATCH", f"/domains/{web.managed}", {"mta_sts_mode": "strict"}).status == 422


def test_the_policy_is_served_over_https_for_the_mta_sts_host_only(web: WebServer) -> None:
    web.db.run_sync(mtasts.set_mode, web.other, "enforce")
    host = {"Host": f"mta-sts.{web.other}"}
    reply = web.client(tls=True).get("/.well-known/mta-sts.txt", headers=host)
    assert reply.status == 200
    assert reply.header("content-type") == "text/plain; charset=utf-8"
    assert reply.body == (b"version: STSv1\r\nmode: enforce\r\nmx: " + HOSTNAME.encode() + b"\r\n"
                          b"max_age: 604800\r\n")
    with_port = {"Host": f"MTA-STS.{web.other}:443"}
    assert web.client(tls=True).get("/.well-known/mta-sts.txt", headers=with_port).status == 200
    # not over plain HTTP, not for another host, not for a domain whose mode is none
    assert web.client().get("/.well-known/mta-sts.txt", headers=host).status == 404
    assert web.client(tls=True).get("/.well-known/mta-sts.txt",
                                    headers={"Host": web.other}).status == 404
    web.db.run_sync(mtasts.set_mode, web.other, "none")
    assert web.client(tls=True).get("/.well-known/mta-sts.txt", headers=host).status == 404


def test_an_acme_challenge_is_answered_from_the_database(web: WebServer) -> None:
    web.db.run_sync(acme.put_challenge, "tok-En_1", "tok-En_1.thumbprint")
    reply = web.client().get("/.well-known/acme-challenge/tok-En_1")
    assert (reply.status, reply.body) == (200, b"tok-En_1.thumbprint")
    assert web.client().get("/.well-known/acme-challenge/unknown").status == 404
    assert web.client().get("/.well-known/acme-challenge/bad%20token").status == 404
    assert web.client().get("/.well-known/acme-challenge/" + "a" * 5000).status == 404
    web.db.run_sync(acme.delete_challenges, ["tok-En_1"])
    assert web.client().get("/.well-known/acme-challenge/tok-En_1").status == 404
