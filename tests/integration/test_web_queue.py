"""/api/v1/queue, /api/v1/trace and /api/v1/metrics/summary against real mail: messages
submitted through the real msa, tried by the real mta's relay towards a next hop that
does not answer (so they stay deferred), then listed, shown, retried, traced and
deleted through the web service, with who may do what checked for every endpoint."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from postroom.store import spool
from postroom.store.errors import NotFound
from tests.support.browser import csp_violations, save_screenshot
from tests.support.instance import queue_id_of, unverified_tls
from tests.support.ports import free_port
from tests.support.redisdb import wait_until
from tests.support.suite import Suite
from tests.support.web import PASSWORD, WebClient, WebServer, web_on_suite

pytestmark = pytest.mark.slow

FAR = "far.invalid"   # no such domain: the relay's DNS server does not answer either


class Mail:
    """The queue ids of the module's messages."""

    out: str      # manager's user -> far away (only the managed domain)
    cross: str    # manager's user -> a user of the other local domain
    foreign: str  # the other domain's user -> far away (not the manager's)
    spare: str    # manager's user -> far away, deleted by the manager


def submit(port: int, sender: str, rcpt: str) -> str:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, rcpt, "for the queue"
    msg["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    msg.set_content("stays in the queue\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=unverified_tls())
        client.login(sender, PASSWORD)
        client.mail(sender)
        code, reply = client.rcpt(rcpt)
        assert code == 250, reply
        code, reply = client.data(msg.as_bytes().replace(b"\n", b"\r\n"))
        assert code == 250, reply
    return queue_id_of(reply.decode())


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Suite, WebServer, Mail]]:
    with Suite(redis_url, tmp_path_factory.mktemp("webqueue")) as suite:
        dead_dns = free_port()   # UDP: nothing answers there
        nothing = free_port()    # TCP: nothing listens (a service that is down)
        msa = suite.start("msa", wait=False)
        mta = suite.start("mta", wait=False, POSTROOM_DNS_SERVERS=f"127.0.0.1:{dead_dns}",
                          POSTROOM_DNS_TIMEOUT="1s", POSTROOM_RECONCILE_INTERVAL="1s",
                          POSTROOM_RETRY_INITIAL="1h")
        for running in (msa, mta):
            running.process.wait_healthy(timeout=60)
        web = web_on_suite(suite, POSTROOM_WEB_SERVICES=(
            f"msa=http://127.0.0.1:{msa.process.http_port},"
            f"mta=http://127.0.0.1:{mta.process.http_port},mda=http://127.0.0.1:{nothing}"))
        mail = Mail()
        mail.out = submit(msa.port, web.manager, f"someone@{FAR}")
        mail.cross = submit(msa.port, web.manager, web.admin)
        mail.foreign = submit(msa.port, web.admin, f"someone@{FAR}")
        mail.spare = submit(msa.port, web.manager, f"else@{FAR}")
        # the relay tried the outbound ones once and deferred them
        wait_until(lambda: all(r.attempts >= 1 for q in (mail.out, mail.foreign, mail.spare)
                               for r in suite.db.run_sync(spool.get_spool, q).recipients),
                   timeout=60)
        yield suite, web, mail


@pytest.fixture(scope="module")
def clients(stack: tuple[Suite, WebServer, Mail]) -> dict[str, WebClient]:
    _, web, _ = stack
    admin, manager, plain = web.client(), web.client(), web.client()
    assert admin.login(web.admin).status == 303
    assert manager.login(web.manager).status == 303
    plain.login(web.plain)
    return {"admin": admin, "manager": manager, "plain": plain, "anonymous": web.client(),
            "admin_token": web.client(bearer=web.admin_token),
            "domain_token": web.client(bearer=web.managed_token)}


def ids(reply: Any) -> list[str]:
    return [m["queue_id"] for m in reply.json()["items"]]


def test_the_list_is_paginated_filtered_and_scoped_to_the_callers_domains(stack, clients):
    _, web, mail = stack
    everything = clients["admin_token"].api("GET", "/queue")
    assert everything.status == 200
    assert ids(everything) == [mail.out, mail.cross, mail.foreign, mail.spare]
    assert everything.json()["total"] == 4
    page = clients["admin"].api("GET", "/queue?offset=1&limit=2").json()
    assert [m["queue_id"] for m in page["items"]] == [mail.cross, mail.foreign]
    assert (page["total"], page["offset"], page["limit"]) == (4, 1, 2)
    for who in ("manager", "domain_token"):
        reply = clients[who].api("GET", "/queue")
        assert ids(reply) == [mail.out, mail.cross, mail.spare], who
    assert ids(clients["admin"].api("GET", "/queue?state=deferred")) == [
        mail.out, mail.foreign, mail.spare]
    assert ids(clients["admin"].api("GET", "/queue?state=queued")) == [mail.cross]
    assert ids(clients["admin"].api("GET", f"/queue?to=@{web.other}")) == [mail.cross]
    assert ids(clients["manager"].api("GET", f"/queue?from={web.admin}")) == []
    assert ids(clients["admin"].api("GET", f"/queue?address={web.admin}")) == [
        mail.cross, mail.foreign]
    bad = clients["admin"].api("GET", "/queue?state=lost")
    assert bad.status == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert clients["plain"].api("GET", "/queue").status == 403
    refused = clients["anonymous"].api("GET", "/queue")
    assert refused.status == 401 and refused.json()["error"]["code"] == "unauthorized"


def test_a_message_shows_its_recipients_states_and_attempts(stack, clients):
    _, web, mail = stack
    shown = clients["manager"].api("GET", f"/queue/{mail.out}")
    assert shown.status == 200
    body = shown.json()
    assert body["mail_from"] == web.manager and body["auth_user"] == web.manager
    [rcpt] = body["recipients"]
    assert (rcpt["address"], rcpt["stream"], rcpt["state"]) == (f"someone@{FAR}", "outbound",
                                                                "pending")
    assert rcpt["attempts"] >= 1 and rcpt["last_error"]
    assert body["attempts"][0]["result"] == "deferred"
    assert body["attempts"][0]["recipient_id"] == rcpt["id"]
    assert clients["domain_token"].api("GET", f"/queue/{mail.cross}").status == 200
    assert clients["admin_token"].api("GET", f"/queue/{mail.foreign}").status == 200
    for who in ("manager", "domain_token"):
        other = clients[who].api("GET", f"/queue/{mail.foreign}")
        assert other.status == 403 and other.json()["error"]["code"] == "forbidden", who
    assert clients["plain"].api("GET", f"/queue/{mail.out}").status == 403
    assert clients["anonymous"].api("GET", f"/queue/{mail.out}").status == 401
    missing = clients["admin"].api("GET", "/queue/NOSUCHQUEUEID00")
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"


def test_retry_makes_pending_recipients_due_and_the_relay_tries_again(stack, clients):
    suite, _, mail = stack
    before = suite.db.run_sync(spool.get_spool, mail.out).recipients[0].attempts
    assert clients["manager"].api("POST", f"/queue/{mail.out}/retry", csrf=False).status == 403
    reply = clients["manager"].api("POST", f"/queue/{mail.out}/retry")
    assert reply.status == 200 and reply.json() == {"queue_id": mail.out, "scheduled": 1}
    wait_until(lambda: suite.db.run_sync(spool.get_spool, mail.out).recipients[0].attempts
               > before, timeout=30)
    assert clients["domain_token"].api("POST", f"/queue/{mail.foreign}/retry").status == 403
    assert clients["admin_token"].api("POST", f"/queue/{mail.foreign}/retry").status == 200
    assert clients["plain"].api("POST", f"/queue/{mail.out}/retry").status == 403
    assert clients["anonymous"].api("POST", f"/queue/{mail.out}/retry").status == 401
    assert clients["admin"].api("POST", "/queue/NOSUCHQUEUEID00/retry").status == 404


def test_the_trace_has_the_clis_events_in_time_order(stack, clients):
    _, web, mail = stack
    reply = clients["manager"].api("GET", f"/trace/{mail.out}")
    assert reply.status == 200
    story = reply.json()
    assert story["queue_id"] == mail.out and story["message"]["mail_from"] == web.manager
    whats = [e["what"] for e in story["events"]]
    assert whats[0].startswith(f"received submission <{web.manager}> submitted by ")
    assert any(w.startswith(f"<someone@{FAR}> deferred") for w in whats)
    assert whats[-1] == f"<someone@{FAR}> next attempt"
    assert clients["domain_token"].api("GET", f"/trace/{mail.foreign}").status == 403
    assert clients["admin_token"].api("GET", f"/trace/{mail.foreign}").status == 200
    assert clients["plain"].api("GET", f"/trace/{mail.out}").status == 403
    assert clients["anonymous"].api("GET", f"/trace/{mail.out}").status == 401
    assert clients["admin"].api("GET", "/trace/NOSUCHQUEUEID00").status == 404


def test_delete_drops_the_message_without_a_bounce_and_only_for_whom_owns_all_of_it(
        stack, clients):
    suite, _, mail = stack
    # the cross-domain message also belongs to the other domain's user
    refused = clients["manager"].api("DELETE", f"/queue/{mail.cross}")
    assert refused.status == 403 and "do not manage" in refused.json()["error"]["message"]
    assert clients["domain_token"].api("DELETE", f"/queue/{mail.foreign}").status == 403
    assert clients["plain"].api("DELETE", f"/queue/{mail.spare}").status == 403
    assert clients["anonymous"].api("DELETE", f"/queue/{mail.spare}").status == 401
    assert clients["manager"].api("DELETE", f"/queue/{mail.spare}", csrf=False).status == 403
    before = len(suite.db.run_sync(spool.list_spool))
    assert clients["manager"].api("DELETE", f"/queue/{mail.spare}").status == 204
    with pytest.raises(NotFound):
        suite.db.run_sync(spool.get_spool, mail.spare)
    # dropped, not bounced: no new message (a DSN) appeared in the queue
    assert len(suite.db.run_sync(spool.list_spool)) == before - 1
    assert clients["manager"].api("DELETE", f"/queue/{mail.spare}").status == 404
    assert clients["admin_token"].api("DELETE", f"/queue/{mail.cross}").status == 204


def test_the_summary_has_backlog_hourly_outcomes_rejects_and_service_health(stack, clients):
    reply = clients["admin_token"].api("GET", "/metrics/summary")
    assert reply.status == 200
    body = reply.json()
    assert {s["stream"] for s in body["streams"]} >= {"outbound", "deliver"}
    outbound = {b["stream"]: b for b in body["backlog"]}["outbound"]
    assert outbound["pending"] >= 2 and outbound["deferred"] >= 2
    assert sum(h["count"] for h in body["deliveries"] if h["reason"] == "deferred") >= 3
    assert body["rejects"] == [] and isinstance(body["smtp_rejects"], dict)
    assert {s["name"]: s["state"] for s in body["services"]} == {
        "msa": "up", "mta": "up", "mda": "down"}
    mine = clients["manager"].api("GET", "/metrics/summary").json()
    assert mine["rejects"] is None and mine["smtp_rejects"] is None
    token = clients["domain_token"].api("GET", "/metrics/summary").json()
    assert token["rejects"] is None and token["backlog"] == mine["backlog"]
    assert {b["stream"]: b for b in mine["backlog"]}["outbound"]["pending"] \
        <= outbound["pending"]
    assert clients["plain"].api("GET", "/metrics/summary").status == 403
    assert clients["anonymous"].api("GET", "/metrics/summary").status == 401


def test_the_pages_show_the_queue_a_message_and_a_trace(stack, clients):
    suite, web, mail = stack
    manager = clients["manager"]
    listing = manager.get("/queue?state=deferred")
    assert listing.status == 200 and mail.out in listing.text and mail.foreign not in listing.text
    message = manager.get(f"/queue/{mail.out}")
    assert message.status == 200 and f"someone@{FAR}" in message.text
    assert manager.get(f"/queue/{mail.foreign}").status == 403
    trace = manager.get(f"/trace/{mail.out}")
    assert trace.status == 200 and "next attempt" in trace.text
    assert manager.get(f"/trace?queue_id={mail.out}").header("location") == f"/trace/{mail.out}"
    token = manager.form_csrf(f"/queue/{mail.out}")
    retried = manager.post_form(f"/queue/{mail.out}/retry", {"csrf_token": token})
    assert retried.status == 303 and retried.header("location") == f"/queue/{mail.out}"
    assert manager.post_form(f"/queue/{mail.out}/retry", {"csrf_token": "x"}).status == 403
    # the message page's delete form drops a message (here one spooled for it)
    doomed = suite.db.run_sync(spool.create_spool, kind="submission", mail_from=web.manager,
                               recipients=[(f"gone@{FAR}", "outbound", None, None)],
                               message=b"Subject: doomed\r\n\r\nx\r\n")
    page = manager.get(f"/queue/{doomed}")
    assert "Delete (no bounce)" in page.text
    token = manager.form_csrf(f"/queue/{doomed}")
    deleted = manager.post_form(f"/queue/{doomed}/delete", {"csrf_token": token})
    assert deleted.status == 303 and deleted.header("location") == "/queue"
    with pytest.raises(NotFound):
        suite.db.run_sync(spool.get_spool, doomed)
    shared = suite.db.run_sync(spool.create_spool, kind="submission", mail_from=web.manager,
                               recipients=[(web.admin, "deliver", None, None)],
                               message=b"Subject: shared\r\n\r\nx\r\n")
    page = manager.get(f"/queue/{shared}")
    assert page.status == 200 and "Delete (no bounce)" not in page.text
    token = manager.form_csrf(f"/queue/{shared}")
    assert manager.post_form(f"/queue/{shared}/delete", {"csrf_token": token}).status == 403
    overview = clients["admin"].get("/")
    assert overview.status == 200 and "Deliveries" in overview.text and "<svg" in overview.text
    assert "mda" in overview.text


def test_the_pages_in_a_browser_without_csp_violations(stack, clients, browser):
    """The overview, the queue, a message and a trace in headless Chromium, as an
    administrator; screenshots under POSTROOM_TEST_ARTIFACTS for people to look at."""
    _, web, mail = stack
    base = f"http://{web.host}:{web.port}"
    browser.get(f"{base}/login")
    browser.find_element(By.ID, "address").send_keys(web.admin)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, ".login button[type=submit]").click()
    wait_until(lambda: browser.current_url == f"{base}/", timeout=10)
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2  # deliveries and rejects
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.chart-series-deferred")
    assert bars and bars[0].value_of_css_property("fill") != "rgb(0, 0, 0)"  # charts.css
    save_screenshot(browser, "webqueue-overview")
    browser.get(f"{base}/queue")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.queue tbody tr")
    assert mail.out in rows[0].text
    save_screenshot(browser, "webqueue-queue")
    # the list's retry form: back to the list with the notice
    rows[0].find_element(By.CSS_SELECTOR, "form.row-action button").click()
    wait_until(lambda: "will be tried now" in browser.page_source, timeout=10)
    browser.get(f"{base}/queue/{mail.out}")
    assert "Delete (no bounce)" in browser.page_source
    save_screenshot(browser, "webqueue-message")
    browser.get(f"{base}/trace/{mail.out}")
    events = browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
    assert len(events) >= 3 and "received submission" in events[0].text
    save_screenshot(browser, "webqueue-trace")
    assert csp_violations(browser) == []
