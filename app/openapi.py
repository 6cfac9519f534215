"""The OpenAPI document: FastAPI's, plus the schemas of the bodies the routes read themselves.

The prediction, feedback and training routes parse their JSON body in a dependency that runs after the key check (an
unauthenticated request is never parsed) and off the event loop when it is large, so FastAPI does not see a body
parameter. `request_body` documents such a body by its type, and `openapi_document` adds the models it refers to, as
pydantic writes their JSON Schema: nothing in the document is written by hand.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"
JSON_TYPE = "application/json"


def request_body(body_type, *, required: bool = True, examples: dict | None = None) -> dict:
    "`openapi_extra` documenting a JSON body of `body_type` (examples: name -> value), read by the route itself."
    if isinstance(body_type, type) and issubclass(body_type, BaseModel): schema = {"$ref": REF.format(model=body_type.__name__)}
    else:
        schema = TypeAdapter(body_type).json_schema(ref_template=REF)
        schema.pop("$defs", None)                 # the models go to the components (see `openapi_document`)
    content = {"schema": schema, **({"examples": {k: {"value": v} for k, v in examples.items()}} if examples else {})}
    return {"requestBody": {"required": required, "content": {JSON_TYPE: content}}}


def body_models_schemas(models: tuple[type[BaseModel], ...]) -> dict:
    "The JSON Schemas of `models` and of the models they use, by name, as OpenAPI components."
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    return top.get("$defs", {})


def openapi_document(app: FastAPI, body_models: tuple[type[BaseModel], ...]) -> dict:
    "`app`'s OpenAPI document (made once), with the components of `body_models`."
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(body_models_schemas(body_models))
        document["components"]["schemas"] = dict(sorted(schemas.items()))
        app.openapi_schema = document
    return app.openapi_schema
