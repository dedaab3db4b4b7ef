"""/api/v1/openapi.json: the API's own description, open to everyone."""

from __future__ import annotations

from typing import Any

from postroom_web import openapi
from postroom_web.framework import REGISTRY, Access, Ctx, endpoint

_document: dict[str, Any] = {}


@endpoint("GET", "/openapi.json", summary="The OpenAPI 3.1 document of this API",
          tags=["meta"], response=dict[str, Any], access=Access.PUBLIC, hidden=True)
async def openapi_document(ctx: Ctx) -> dict[str, Any]:
    if not _document:  # every route is registered by the time the first request arrives
        _document.update(openapi.document(REGISTRY))
    return _document
