"""The OpenAPI schema as this server enforces it: FastAPI's generated schema plus the limits of this
server's settings on the request bodies, and bearer auth only where a key is set."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .middleware import PROTECTED_PREFIXES
from .settings import Settings

NOT_BLANK = r"\S"  # the server refuses empty and whitespace-only labels and texts
HAS_SLOT = r"\{\}"  # a template holds '{}' where the label goes


def request_limits(settings: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    """Per path, the JSON Schema keywords each request-body property gets; the checks themselves
    are app/inputs.py's (their 422s name the limit), these keywords tell clients beforehand."""
    images = {"minItems": 1, "maxItems": settings.max_images}
    # labels are compared after collapsing whitespace, ignoring case: uniqueItems is the part a schema can say
    labels = {
        "minItems": 1,
        "maxItems": settings.max_labels,
        "uniqueItems": True,
        "items": {"minLength": 1, "maxLength": settings.max_label_chars, "pattern": NOT_BLANK},
    }
    template = {"maxLength": settings.max_template_chars, "pattern": HAS_SLOT}
    templates = {"maxItems": settings.max_templates, "items": template}  # [] means the checkpoint's own
    top_k = {"minimum": 1}
    texts = {
        "minItems": 1,
        "maxItems": settings.max_texts,
        "items": {"minLength": 1, "maxLength": settings.max_text_chars, "pattern": NOT_BLANK},
    }
    return {
        "/classify": {"images": images, "labels": labels, "template": templates, "top_k": top_k},
        "/classify/json": {"images": images, "labels": labels, "templates": templates, "top_k": top_k},
        "/embed/image": {"images": images},
        "/embed/text": {"texts": texts, "template": template},
    }


def build_openapi(app: FastAPI, settings: Settings) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        add_request_limits(schema, request_limits(settings))
        if settings.api_key is not None:
            require_bearer(schema)
        else:
            drop_responses(schema, "401")
        app.openapi_schema = schema
    return app.openapi_schema


def add_request_limits(schema: dict, limits: dict[str, dict[str, dict[str, Any]]]) -> None:
    components = schema["components"]["schemas"]
    for path, properties in limits.items():
        for media_type, media in schema["paths"][path]["post"]["requestBody"]["content"].items():
            body = components[media["schema"]["$ref"].rsplit("/", 1)[-1]]
            if media_type == "multipart/form-data":
                drop_null_branches(body)
            for name, keywords in properties.items():
                constrain(body["properties"][name], keywords)


def drop_null_branches(body: dict) -> None:
    """A form field is absent or a string, never null (a client taking the schema's null literally
    would send the text 'null'): an optional field's schema is its non-null branch."""
    for name, property_schema in body["properties"].items():
        branches = [branch for branch in property_schema.get("anyOf", ()) if branch.get("type") != "null"]
        if len(branches) == 1:
            rest = {key: value for key, value in property_schema.items() if key != "anyOf"}
            body["properties"][name] = {**branches[0], **rest}


def constrain(property_schema: dict, keywords: dict[str, Any]) -> None:
    """Merge ``keywords`` into a property's schema; an optional property (anyOf [..., null]) gets
    them on its non-null branch, and ``items`` merges into the items' schema."""
    if "anyOf" in property_schema:
        for branch in property_schema["anyOf"]:
            if branch.get("type") != "null":
                constrain(branch, keywords)
        return
    for keyword, value in keywords.items():
        if keyword == "items":
            constrain(property_schema["items"], value)
        else:
            property_schema[keyword] = value


def require_bearer(schema: dict) -> None:
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "the server's CLIP_API_KEY"}
    }
    for path, operations in schema["paths"].items():
        if path.startswith(PROTECTED_PREFIXES):
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]


def drop_responses(schema: dict, status: str) -> None:
    """A server without a key never answers 401: its schema does not say it might."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop(status, None)
