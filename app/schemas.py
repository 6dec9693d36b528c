"""Request and response models, with examples for the OpenAPI page."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MODEL_EXAMPLE = {"name": "emoji-clip", "sha256": "9f86d081884c"}


class LabelScore(BaseModel):
    label: str = Field(description="the label as classified (whitespace normalised)", examples=["cat"])
    probability: float = Field(
        description="softmax over the request's labels of logits_per_image; sums to 1 per image", examples=[0.87]
    )
    logit: float = Field(
        description="exp(logit_scale) x cosine(image, label); does not depend on the other labels", examples=[21.3]
    )


class ImageResult(BaseModel):
    filename: str | None = Field(description="the upload's filename, as sent", examples=["cat.jpg"])
    scores: list[LabelScore] = Field(description="one entry per label, in the order the labels were sent")
    top_k: list[LabelScore] = Field(description="the top_k labels, most probable first")


class ModelRef(BaseModel):
    name: str = Field(description="checkpoint directory name", examples=["emoji-clip"])
    sha256: str = Field(description="first 12 hex digits of the weights' sha256", examples=["9f86d081884c"])


class ClassifyResponse(BaseModel):
    results: list[ImageResult] = Field(description="one per image, in upload order")
    model: ModelRef
    templates: list[str] = Field(
        description="prompt templates used (embeddings averaged over them)", examples=[["a photo of a {}."]]
    )
    time_ms: float = Field(description="server time for this request, in milliseconds", examples=[12.5])


# What app/inputs.py's decode_base64 takes: standard base64 with its padding, after an optional
# data: URL prefix (its comma within the first 100 characters). Documented only: a pydantic pattern
# would refuse before that check, whose invalid_base64 message says what is wrong.
BASE64_OR_DATA_URL = r"^(?:data:[^,]{0,94},)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class Base64Image(BaseModel):
    data: str = Field(
        json_schema_extra={"pattern": BASE64_OR_DATA_URL},
        description="the image file's bytes, base64 (a data: URL is accepted too)",
        examples=["iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"],
    )
    filename: str | None = Field(None, description="echoed in the result", examples=["pixel.png"])


class ClassifyJSONRequest(BaseModel):
    images: list[Base64Image] = Field(description="one or more images (at most CLIP_MAX_IMAGES)")
    labels: list[str] = Field(
        description="class names in plain words (at most CLIP_MAX_LABELS, each at most "
        "CLIP_MAX_LABEL_CHARS characters, no duplicates ignoring case)",
        examples=[["cat", "dog", "pizza"]],
    )
    templates: list[str] | None = Field(
        None,
        description="prompt templates, each with '{}' for the label and at most "
        "CLIP_MAX_TEMPLATE_CHARS characters; default: the "
        "checkpoint's own (see GET /v1/model)",
        examples=[["a photo of a {}."]],
    )
    top_k: int = Field(5, description="how many labels in top_k (capped at the number of labels)", examples=[3])


class EmbedTextRequest(BaseModel):
    texts: list[str] = Field(
        description="texts embedded as given (at most CLIP_MAX_TEXTS)", examples=[["a photo of a cat"]]
    )
    template: str | None = Field(
        None, description="optional template with '{}', applied to each text", examples=["a photo of a {}."]
    )


class EmbedTextResponse(BaseModel):
    texts: list[str] = Field(description="the texts embedded (after the template, if any)")
    embeddings: list[list[float]] = Field(description="L2-normalised, one per text")
    model: ModelRef


class EmbedImageResponse(BaseModel):
    filenames: list[str | None]
    embeddings: list[list[float]] = Field(description="L2-normalised, one per image, in upload order")
    model: ModelRef


class ModelInfo(BaseModel):
    name: str
    sha256: str = Field(description="full sha256 of model.safetensors")
    checkpoint: str
    device: str = Field(examples=["cpu"])
    dtype: str = Field(examples=["float32"])
    vocab_size: int = Field(examples=[30522])
    templates: list[str] = Field(description="default prompt templates")
    compiled_batch_sizes: list[int] = Field(
        description="batch sizes the image tower runs compiled (CLIP_COMPILE); every other size runs eager",
        examples=[[1, 2]],
    )
    pads_to_compiled: bool = Field(
        description="whether a batch of another size runs compiled too, padded up to the next compiled size "
        "(on CUDA, where the compiled tower is CUDA graphs)"
    )
    config: dict[str, Any] = Field(description="the checkpoint's config.json")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable error code", examples=["duplicate_label"])
    message: str = Field(description="what went wrong and how to fix it")
    status: int = Field(examples=[422])
    request_id: str | None = Field(description="the X-Request-ID of the request")
