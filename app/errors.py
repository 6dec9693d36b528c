"""The one place where errors become HTTP answers: domain errors to status codes, and every
answer an error JSON ``{"error": code, "message": ..., "request_id": ...}``. Never raw text, never a 500
for bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .exceptions import (
    ImageTooLarge,
    InvalidInput,
    NotReady,
    Overloaded,
    RequestTooLarge,
    ServiceError,
    ShuttingDown,
    Unauthorized,
    UnsupportedImage,
    UploadTooLarge,
)

log = logging.getLogger("app.errors")

STATUS = {
    InvalidInput: 422,
    UnsupportedImage: 415,
    ImageTooLarge: 413,
    UploadTooLarge: 413,
    RequestTooLarge: 413,
    Unauthorized: 401,
    Overloaded: 503,
    NotReady: 503,
    ShuttingDown: 503,
}

# (status, code, example message) for the OpenAPI page and the error table in docs/service.md
ERROR_TABLE = [
    (
        400,
        "unterminated_multipart",
        "the multipart body ends without its closing delimiter ('--xyz--'): it was cut "
        "short, so its last part would be lost; send the whole body",
    ),
    (
        400,
        "unparseable_body",
        "the body is not valid JSON (Expecting value at character 1): send a JSON object, "
        "as this operation's request body shows",
    ),
    (401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>' (the server's CLIP_API_KEY)"),
    (404, "not_found", "Not Found"),
    (405, "method_not_allowed", "Method Not Allowed"),
    (
        408,
        "request_timeout",
        "the request body stalled: no bytes for 30 s while more were due (CLIP_BODY_TIMEOUT_S); "
        "send the whole body, as its Content-Length says",
    ),
    (413, "upload_too_large", "request body is over the limit of 1048576 bytes (CLIP_MAX_UPLOAD_BYTES)"),
    (413, "image_too_large", "'big.png' is 20000x20000 = 400000000 pixels, over the limit of 40000000"),
    (
        413,
        "too_many_pixels",
        "the images of this request decode to more than 100000000 pixels in all, the limit "
        "(CLIP_MAX_REQUEST_PIXELS): send fewer or smaller images, or several requests (a JPEG decodes at "
        "a reduced scale, so it counts less)",
    ),
    (
        415,
        "unsupported_image",
        "'notes.txt' is not an image in a format this server can read (JPEG, PNG, WebP, GIF, BMP, TIFF, ...)",
    ),
    (422, "invalid_request", "images: Field required"),
    (422, "no_images", "no images: send one or more image files in 'images'"),
    (422, "no_labels", "no labels: send at least one class name in 'labels'"),
    (422, "empty_label", "label 2 is empty or only whitespace"),
    (
        422,
        "unknown_label",
        "label 2 ('🐱') has only 1 unknown token(s) in the model's vocabulary (emoji, control and "
        "zero-width characters are not in it): name the class in words",
    ),
    (422, "duplicate_label", "label 'Cat' repeats 'cat' (labels are compared case-insensitively)"),
    (422, "label_too_long", "label 1 has 300 characters, more than the limit of 100"),
    (422, "too_many_labels", "70 labels, more than the limit of 64"),
    (422, "too_many_images", "20 images, more than the limit of 16"),
    (422, "too_many_templates", "20 templates, more than the limit of 16"),
    (422, "template_too_long", "template 1 has 1500 characters, more than the limit of 200"),
    (422, "bad_template", "template 'a photo' has no '{}' where the label goes, e.g. 'a photo of a {}.'"),
    (422, "bad_top_k", "top_k must be at least 1, got 0"),
    (422, "invalid_labels", 'a JSON labels field must be an array of strings, e.g. ["cat", "dog"]'),
    (422, "invalid_base64", "'cat.png' is not valid base64: Incorrect padding"),
    (422, "no_texts", "no texts: send at least one string in 'texts'"),
    (422, "empty_text", "a text is empty or only whitespace"),
    (422, "too_many_texts", "70 texts, more than the limit of 64"),
    (422, "text_too_long", "text 3 has 5000 characters, more than the limit of 1000"),
    (
        422,
        "invalid_text",
        "label 1 holds '\\ud800', a lone UTF-16 surrogate, at character 1: send valid Unicode "
        "(a surrogate must be half of a pair)",
    ),
    (503, "queue_full", "the server is busy: 250 images are queued and the queue holds 256; retry shortly"),
    (503, "not_ready", "the model is still loading; retry shortly"),
    (
        503,
        "shutting_down",
        "the server is shutting down and this request outlasted its drain of 30 s (CLIP_DRAIN_SECONDS); "
        "retry: another replica or the restarted server will answer",
    ),
]


def error_body(request: Request | None, status: int, code: str, message: str) -> dict:
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    return {"error": code, "message": message, "status": status, "request_id": request_id}


def error_response(
    request: Request | None, status: int, code: str, message: str, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(request, status, code, message), status_code=status, headers=headers)


def status_of(error: ServiceError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


async def service_error(request: Request, error: ServiceError) -> JSONResponse:
    headers = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    request.state.error_code = error.code
    return error_response(request, status_of(error), error.code, error.message, headers)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    unparsed = next((problem for problem in error.errors() if problem.get("type") == "json_invalid"), None)
    if unparsed is not None:
        position = unparsed["loc"][-1] if unparsed.get("loc") else 0
        reason = unparsed.get("ctx", {}).get("error", "JSON decode error")
        return unparseable_body(
            request, f"the body is not valid JSON ({reason} at character {position + 1})", "a JSON object"
        )
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query"))
        problems.append(f"{where}: {problem.get('msg')}" if where else str(problem.get("msg")))
    request.state.error_code = "invalid_request"
    return error_response(request, 422, "invalid_request", "; ".join(problems))


def unparseable_body(request: Request, problem: str, expected: str) -> JSONResponse:
    request.state.error_code = "unparseable_body"
    message = f"{problem}: send {expected}, as this operation's request body shows"
    return error_response(request, 400, "unparseable_body", message)


async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    if error.status_code == 400:  # FastAPI's answer to a form body that does not parse
        return unparseable_body(
            request, f"the body does not parse as a form ({error.detail})", "multipart/form-data (as curl -F does)"
        )
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    request.state.error_code = code
    return error_response(request, error.status_code, code, str(error.detail), getattr(error, "headers", None))


async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unexpected error (request id %s)", getattr(request.state, "request_id", None))
    request.state.error_code = "internal_error"
    return error_response(
        request, 500, "internal_error", "internal error; the server log has the details under this request id"
    )


def install(app: FastAPI) -> None:
    # Starlette types every handler as taking Exception; each of these takes the class it is registered for
    app.add_exception_handler(ServiceError, service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected_error)


def openapi_responses(*statuses: int) -> dict:
    """``responses=`` for a route: each status with its error codes and an example."""
    from .schemas import ErrorResponse

    responses = {}
    for status in statuses:
        rows = [(code, message) for s, code, message in ERROR_TABLE if s == status]
        responses[status] = {
            "model": ErrorResponse,
            "description": "; ".join(f"`{code}`" for code, _ in rows),
            "content": {
                "application/json": {
                    "examples": {
                        code: {
                            "value": {"error": code, "message": message, "status": status, "request_id": "3f2c9e0a1b"}
                        }
                        for code, message in rows
                    }
                }
            },
        }
    return responses
