"""POST /classify (multipart) and POST /classify/json: parse, call the service, return its answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from ..errors import openapi_responses
from ..inputs import decode_image_field, labels_from_form
from ..schemas import ClassifyJSONRequest, ClassifyResponse

router = APIRouter(tags=["classify"])
ERRORS = openapi_responses(400, 401, 408, 413, 415, 422, 503)


@router.post(
    "/classify", response_model=ClassifyResponse, responses=ERRORS, summary="Classify uploaded images against labels"
)
async def classify(
    request: Request,
    images: Annotated[
        list[UploadFile],
        File(
            description="one or more image files (JPEG, PNG, WebP, GIF first frame, "
            "BMP, TIFF, ...); at most CLIP_MAX_IMAGES, each at most "
            "CLIP_MAX_IMAGE_PIXELS pixels, the whole body at most "
            "CLIP_MAX_UPLOAD_BYTES"
        ),
    ],
    labels: Annotated[
        list[str],
        Form(
            description="class names, one per field (repeat the field), or one field "
            "holding a JSON array of strings; at most CLIP_MAX_LABELS, each at "
            "most CLIP_MAX_LABEL_CHARS characters, no duplicates ignoring case"
        ),
    ],
    template: Annotated[
        list[str] | None,
        Form(
            description="prompt template with '{}' for the label; repeat for "
            "prompt ensembling (embeddings averaged); default: the "
            "checkpoint's own"
        ),
    ] = None,
    top_k: Annotated[
        int, Form(description="labels in top_k, most probable first (capped at the number of labels)")
    ] = 5,
) -> dict:
    """Each image's probability over the labels: softmax of CLIP's logits_per_image. Per image, in
    upload order: `scores` (label order) and `top_k` (sorted)."""
    uploads = [(upload.filename, await upload.read()) for upload in images]
    return await request.app.state.service.classify(uploads, labels_from_form(labels), template, top_k)


@router.post(
    "/classify/json",
    response_model=ClassifyResponse,
    responses=ERRORS,
    summary="Classify base64 images against labels (JSON body)",
)
async def classify_json(request: Request, body: ClassifyJSONRequest) -> dict:
    """The same as POST /classify for clients that cannot send multipart: images as base64 strings."""
    uploads = [
        (image.filename, decode_image_field(image.data, image.filename, position))
        for position, image in enumerate(body.images, start=1)
    ]
    return await request.app.state.service.classify(uploads, body.labels, body.templates, body.top_k)
