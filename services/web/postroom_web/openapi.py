"""The OpenAPI 3.1 document of the REST API, generated from the registry's routes and models.

The models that validate requests (pydantic) give the JSON Schemas (OpenAPI 3.1
is JSON Schema 2020-12, which pydantic writes), so what is documented is what
is checked. Served without authentication at /api/v1/openapi.json.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from postroom_web.framework import ERROR_CODES, Access, ErrorBody, Registry, Route

REF = "#/components/schemas/{model}"
OPENAPI_VERSION = "3.1.0"

_DESCRIPTIONS = {
    400: "The request is malformed (e.g. the body is not JSON).",
    401: "No credentials, or unknown ones.",
    403: "Not allowed for this caller, or a missing CSRF token (cookie sessions).",
    404: "No such object, or no such object the caller may see.",
    405: "Method not allowed.",
    409: "Conflicts with what exists (already exists, still in use).",
    413: "The request body is too large.",
    415: "The body is not application/json.",
    422: "The request does not validate; details name each problem.",
    429: "Too many requests.",
    500: "Internal error (logged; no details are given).",
    503: "Temporarily unavailable (database, Redis); try again.",
}


def _errors(route: Route) -> list[int]:
    statuses = {429, 500, 503}  # 429: the per-client request rate (POSTROOM_WEB_RATE)
    if route.access is not Access.PUBLIC:
        statuses |= {401, 403}
    if route.path_params or route.query is not None or route.body is not None:
        statuses.add(422)
    if route.path_params:
        statuses.add(404)
    if route.body is not None:
        statuses |= {400, 413, 415}
    if route.changes_state:
        statuses.add(409)
    statuses |= set(route.errors)
    return sorted(statuses)


def document(registry: Registry, *, title: str = "Postroom API",
             version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every API route of ``registry``."""
    routes = [r for r in registry.routes if r.kind == "api" and not r.hidden]
    inputs: list[tuple[Any, JsonSchemaMode, TypeAdapter[Any]]] = [
        ("error", "serialization", TypeAdapter(ErrorBody))]
    for index, route in enumerate(routes):
        if route.query is not None:
            inputs.append(((index, "query"), "validation", TypeAdapter(route.query)))
        if route.body is not None:
            inputs.append(((index, "body"), "validation", TypeAdapter(route.body)))
        if route.response is not None and route.status != 204:
            inputs.append(((index, "response"), "serialization",
                           TypeAdapter(route.response)))
    schemas, top = TypeAdapter.json_schemas(inputs, ref_template=REF)
    components: dict[str, Any] = dict(top.get("$defs", {}))

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            return dict(components[ref.rsplit("/", 1)[1]])
        return schema

    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    for index, route in enumerate(routes):
        if route.operation_id in seen_ids:
            raise ValueError(f"operationId {route.operation_id} is used twice")
        seen_ids.add(route.operation_id)
        parameters: list[dict[str, Any]] = []
        for name, annotation in route.path_params.items():
            parameters.append({"name": name, "in": "path", "required": True,
                               "schema": TypeAdapter(annotation).json_schema()})
        if route.query is not None:
            query = resolve(schemas[((index, "query"), "validation")])
            required = set(query.get("required", ()))
            for name, prop in query.get("properties", {}).items():
                item: dict[str, Any] = {"name": name, "in": "query",
                                        "required": name in required, "schema": prop}
                if "description" in prop:
                    item["description"] = prop["description"]
                parameters.append(item)
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": list(route.tags),
            "responses": {},
        }
        if route.description:
            operation["description"] = route.description
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": schemas[((index, "body"), "validation")]}}}
        if route.response is not None and route.status != 204:
            operation["responses"][str(route.status)] = {
                "description": route.summary or "Success",
                "content": {"application/json": {
                    "schema": schemas[((index, "response"), "serialization")]}}}
        else:
            operation["responses"][str(route.status)] = {"description": route.summary or
                                                         "Success"}
        for status in _errors(route):
            operation["responses"][str(status)] = {"$ref": f"#/components/responses/{status}"}
        operation["security"] = [] if route.access is Access.PUBLIC else \
            [{"bearerAuth": []}, {"sessionCookie": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    error_ref = schemas[("error", "serialization")]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version,
                 "description": "The REST API of Postroom (docs/web.md). Authenticate with "
                                "`Authorization: Bearer prt_...` (`postroom token create`) "
                                "or a console session cookie plus the X-CSRF-Token header "
                                "on requests that change state. Errors are "
                                "`{\"error\": {\"code\", \"message\", \"details\"?}}`."},
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {str(s): {"description": _DESCRIPTIONS.get(s, ERROR_CODES[s]),
                                   "content": {"application/json": {"schema": error_ref}}}
                          for s in sorted(ERROR_CODES)},
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An API token, prt_..."},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "postroom_session",
                                  "description": "A console session (after /login); "
                                                 "state-changing calls need X-CSRF-Token."},
            },
        },
    }
