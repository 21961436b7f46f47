"""The OpenAPI document: the one served is the one checked in, it is valid OpenAPI 3.1, and it describes
every route and every answer the server gives."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from reconciler.api import openapi
from tests.api.harness import MASTER, live_api
from tests.store.backends import Backend

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"


async def test_the_served_document_is_the_checked_in_one(backend: Backend) -> None:
    async with live_api(backend) as live, live.client.get("/api/v1/openapi.json") as response:
        assert response.status == 200
        served = await response.json()
    assert served == json.loads(CHECKED_IN.read_text(encoding="utf-8")), (
        "docs/api/openapi.json is stale: python -m reconciler.api.openapi > docs/api/openapi.json"
    )
    assert CHECKED_IN.read_text(encoding="utf-8") == openapi.rendered()


async def test_every_route_of_the_server_is_in_the_document(backend: Backend) -> None:
    async with live_api(backend) as live:
        routes = {
            (route.method, route.resource.canonical)
            for route in live.server.app.router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
    documented = {
        (method.upper(), path) for path, item in openapi.document()["paths"].items() for method in item
    }
    assert routes == documented


def test_every_operation_describes_its_refusals() -> None:
    for path, item in openapi.document()["paths"].items():
        for method, op in item.items():
            statuses = set(op["responses"])
            assert "503" in statuses, (method, path)
            if op.get("security") != []:
                assert {"401", "403", "429"} <= statuses, (method, path)
            if "{" in path:
                assert {"400", "404"} <= statuses, (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= statuses, (method, path)


def test_the_document_is_valid_openapi_3_1() -> None:
    from schemathesis import openapi as st_openapi

    schema = st_openapi.from_dict(openapi.document())
    assert len(list(schema.get_all_operations())) == len(openapi.OPERATIONS)
    for sub in openapi.SCHEMAS.values():  # every schema in components is itself valid JSON Schema
        jsonschema.Draft202012Validator.check_schema(sub)


async def test_master_key_answers_match_their_schemas(backend: Backend) -> None:
    document = openapi.document()
    async with live_api(backend) as live:
        for path in ("/api/v1/invoices", "/api/v1/reviews", "/api/v1/providers", "/api/v1/instances"):
            async with live.client.get(path, headers=live.auth(MASTER)) as response:
                body = await response.json()
            schema = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"][
                "schema"
            ]
            jsonschema.validate(body, {**schema, "components": document["components"]})
            assert body["items"], path
