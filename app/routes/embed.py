"""POST /embed/image and POST /embed/text: L2-normalised embeddings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from ..errors import openapi_responses
from ..schemas import EmbedImageResponse, EmbedTextRequest, EmbedTextResponse

router = APIRouter(prefix="/embed", tags=["embed"])


@router.post(
    "/image",
    response_model=EmbedImageResponse,
    responses=openapi_responses(400, 401, 408, 413, 415, 422, 503),
    summary="Image embeddings",
)
async def embed_image(
    request: Request, images: Annotated[list[UploadFile], File(description="one or more image files")]
) -> dict:
    uploads = [(upload.filename, await upload.read()) for upload in images]
    return await request.app.state.service.embed_images(uploads)


@router.post(
    "/text",
    response_model=EmbedTextResponse,
    responses=openapi_responses(400, 401, 408, 413, 422, 503),
    summary="Text embeddings (texts as given, no template unless one is passed)",
)
async def embed_text(request: Request, body: EmbedTextRequest) -> dict:
    return await request.app.state.service.embed_texts(body.texts, body.template)
