"""The declarative layer alone: registration, route matching, query parsing, and the
OpenAPI document a registry makes (no service, no database)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from postroom_web import openapi
from postroom_web.framework import Access, Ctx, Page, PageQuery, Registry, endpoint, page
from postroom_web.http import _query_values


class Item(BaseModel):
    name: str


class ItemQuery(PageQuery):
    tag: list[str] = []


def _registry() -> Registry:
    registry = Registry()

    @endpoint("GET", "/things/{thing_id}/items", summary="Items", tags=["things"],
              query=ItemQuery, response=Page[Item], access=Access.CONSOLE, registry=registry)
    def list_items(ctx: Ctx, thing_id: int, query: ItemQuery) -> Page[Item]:
        raise NotImplementedError

    @endpoint("DELETE", "/things/{thing_id}", summary="Remove", status=204,
              access=Access.ADMIN, errors=(429,), registry=registry)
    def remove_thing(ctx: Ctx, thing_id: int) -> None:
        raise NotImplementedError

    @page("GET", "/things", template="things.html", access=Access.CONSOLE, registry=registry)
    def things_page(ctx: Ctx) -> dict[str, object]:
        return {}

    return registry


def test_a_path_is_matched_by_its_segments_and_methods_are_told_apart() -> None:
    registry = _registry()
    found, _ = registry.find("/api/v1/things/7/items")
    assert [(r.method, p) for r, p in found] == [("GET", {"thing_id": "7"})]
    found, _ = registry.find("/api/v1/things/7")
    assert [r.method for r, _ in found] == ["DELETE"]
    assert registry.find("/api/v1/things//items")[0] == []
    assert registry.find("/api/v1/things/7/items/extra")[0] == []


def test_a_route_cannot_be_registered_twice() -> None:
    registry = _registry()
    with pytest.raises(ValueError, match="registered twice"):
        @page("GET", "/things", template="x.html", access=Access.PUBLIC, registry=registry)
        def again(ctx: Ctx) -> dict[str, object]:
            return {}


def test_a_path_parameter_must_be_an_argument_of_the_handler() -> None:
    with pytest.raises(TypeError, match="thing_id"):
        @endpoint("GET", "/x/{thing_id}", summary="x", access=Access.USER,
                  registry=Registry())
        def handler(ctx: Ctx) -> None:
            return None


def test_path_parameters_are_validated_by_their_annotation() -> None:
    route = _registry().routes[0]
    assert route.path_model is not None
    assert route.path_model.model_validate({"thing_id": "7"}).model_dump() == {"thing_id": 7}
    with pytest.raises(ValueError):
        route.path_model.model_validate({"thing_id": "seven"})


def test_repeated_query_parameters_make_a_list_field() -> None:
    assert _query_values(ItemQuery, "/x?tag=a&tag=b&limit=5") == \
        {"tag": ["a", "b"], "limit": "5"}
    assert _query_values(ItemQuery, "/x?tag=a") == {"tag": ["a"]}
    with pytest.raises(ValueError):  # a scalar given twice
        ItemQuery.model_validate(_query_values(ItemQuery, "/x?limit=1&limit=2"))


def test_the_document_declares_parameters_responses_and_errors() -> None:
    doc = openapi.document(_registry())
    assert list(doc["paths"]) == ["/api/v1/things/{thing_id}/items", "/api/v1/things/{thing_id}"]
    listing = doc["paths"]["/api/v1/things/{thing_id}/items"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert params["thing_id"]["in"] == "path" and params["thing_id"]["schema"]["type"] == \
        "integer"
    assert params["tag"]["schema"]["type"] == "array"
    assert params["limit"]["schema"]["maximum"] == 500
    assert set(listing["responses"]) == {"200", "401", "403", "404", "422", "429", "500", "503"}
    removal = doc["paths"]["/api/v1/things/{thing_id}"]["delete"]
    assert "content" not in removal["responses"]["204"]
    assert {"409", "429"} <= set(removal["responses"])
    assert "Page_Item_" in doc["components"]["schemas"]
    assert "things_page" not in str(doc)  # pages are not API operations
