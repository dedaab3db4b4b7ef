"""The REST API answers as its own OpenAPI document says (schemathesis against the real
service): no 500 for anything the document allows or not, every status declared, every
body valid against the declared schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from postroom.mailauth.dmarcreport import IncomingReport, IncomingRow
from postroom.store import dmarc, spool
from tests.support.web import WebServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_every_operation_answers_as_the_document_says(web: WebServer) -> None:
    base = f"http://{web.host}:{web.port}"
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    schema.config.update(base_url=base)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in operations} >= {
        ("GET", "/api/v1/domains"), ("POST", "/api/v1/domains"),
        ("GET", "/api/v1/queue"), ("GET", "/api/v1/queue/{queue_id}"),
        ("POST", "/api/v1/queue/{queue_id}/retry"), ("DELETE", "/api/v1/queue/{queue_id}"),
        ("GET", "/api/v1/trace/{queue_id}"), ("GET", "/api/v1/metrics/summary"),
        ("GET", "/api/v1/dmarc/domains"), ("GET", "/api/v1/dmarc/{domain}"),
        ("GET", "/api/v1/dmarc/{domain}/sources"), ("GET", "/api/v1/dmarc/{domain}/reporters"),
        ("GET", "/api/v1/domains/{domain}/users"), ("POST", "/api/v1/domains/{domain}/users"),
        ("GET", "/api/v1/users/{address}"), ("PATCH", "/api/v1/users/{address}"),
        ("DELETE", "/api/v1/users/{address}"),
        ("GET", "/api/v1/domains/{domain}/managers"),
        ("POST", "/api/v1/domains/{domain}/managers"),
        ("DELETE", "/api/v1/domains/{domain}/managers/{address}"),
        ("GET", "/api/v1/domains/{domain}/aliases"),
        ("POST", "/api/v1/domains/{domain}/aliases"),
        ("DELETE", "/api/v1/domains/{domain}/aliases/{source}"),
        ("GET", "/api/v1/domains/{domain}/dkim"), ("POST", "/api/v1/domains/{domain}/dkim"),
        ("POST", "/api/v1/domains/{domain}/dkim/rotate"),
        ("POST", "/api/v1/domains/{domain}/dkim/{selector}/retire"),
        ("POST", "/api/v1/domains/{domain}/dkim/{selector}/activate"),
        ("GET", "/api/v1/domains/{domain}/dns"), ("GET", "/api/v1/domains/{domain}/dns/check")}
    headers = {"Authorization": f"Bearer {web.admin_token}"}
    # a queued message, so the queue's answers have items to validate
    web.db.run_sync(spool.create_spool, kind="submission", mail_from=web.manager,
                    recipients=[("x@far.invalid", "outbound", None, None)],
                    message=b"Subject: schema\r\n\r\nhi\r\n")
    _dmarc_data(web)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        check()
    answered = [e for e in web.process.log_events()
                if e.get("event") == "request" and e.get("route") == "/api/v1/domains"]
    assert len(answered) >= 40  # the cases reached the service
    # the DMARC answers with figures in them (generated domains are mostly 404s)
    for operation in operations:
        if operation.path.startswith("/api/v1/dmarc/{domain}"):
            for query in ({}, {"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"}):
                operation.Case(path_parameters={"domain": web.managed}, query=query
                               ).call_and_validate(headers=headers, checks=CHECKS)
    figures = {e.get("route") for e in web.process.log_events()
               if e.get("event") == "request" and e.get("status") == 200}
    assert {"/api/v1/dmarc/domains", "/api/v1/dmarc/{domain}", "/api/v1/dmarc/{domain}/sources",
            "/api/v1/dmarc/{domain}/reporters"} <= figures


def _dmarc_data(web: WebServer) -> None:
    """A verdict now and on 2026-03-01, and a report: the DMARC operations have figures."""
    now = datetime.now(UTC)
    web.db.run_sync(dmarc.record_results, [dmarc.DmarcRecord(
        source_ip="192.0.2.44", header_from=web.managed, spf_result="pass", dkim_result="fail",
        dmarc_result="pass", disposition="none", reporting_domain=web.managed,
        spf_aligned=True, received_at=when)
        for when in (now - timedelta(hours=2), datetime(2026, 3, 1, 5, tzinfo=UTC))])
    row = IncomingRow(source_ip="2001:db8::44", count=3, disposition="quarantine",
                      dkim="fail", spf="fail", header_from=web.managed)
    web.db.run_sync(dmarc.store_incoming_report, "5" * 64, IncomingReport(
        org_name="Schema Receiver", email="r@receiver.test", report_id="schema-1",
        domain=web.managed, begin=now - timedelta(days=1), end=now, rows=(row,)))


def test_operations_on_an_existing_domain_answer_as_the_document_says(web: WebServer) -> None:
    """The same with the path's domain (and account) pinned to ones that exist, so the
    generated queries and bodies reach the handlers rather than a 404."""
    base = f"http://{web.host}:{web.port}"
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    schema.config.update(base_url=base)
    headers = {"Authorization": f"Bearer {web.admin_token}"}
    pinned = {"domain": web.managed, "address": web.plain}
    for result in schema.get_all_operations():
        operation = result.ok()
        if "{domain}" not in operation.path and "{address}" not in operation.path:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case: Any) -> None:
            for name, value in pinned.items():
                if name in (case.path_parameters or {}):
                    case.path_parameters[name] = value
            case.call_and_validate(headers=headers, checks=CHECKS)

        check()
    succeeded = {e.get("route") for e in web.process.log_events()
                 if e.get("event") == "request" and str(e.get("status", "")).startswith("2")}
    assert {"/api/v1/domains/{domain}/users", "/api/v1/domains/{domain}/aliases",
            "/api/v1/domains/{domain}/dkim", "/api/v1/domains/{domain}/dns"} <= succeeded
