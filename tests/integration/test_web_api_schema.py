"""The REST API answers as its own OpenAPI document says (schemathesis against the real
service): no 500 for anything the document allows or not, every status declared, every
body valid against the declared schema."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from postroom.store import spool
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
        ("GET", "/api/v1/trace/{queue_id}"), ("GET", "/api/v1/metrics/summary")}
    headers = {"Authorization": f"Bearer {web.admin_token}"}
    # a queued message, so the queue's answers have items to validate
    web.db.run_sync(spool.create_spool, kind="submission", mail_from=web.manager,
                    recipients=[("x@far.invalid", "outbound", None, None)],
                    message=b"Subject: schema\r\n\r\nhi\r\n")
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
