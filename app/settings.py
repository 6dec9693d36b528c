"""Service settings, read once from CLIP_* environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

import model

# The bundled checkpoint, shipped inside the installed distribution. Switch it on here, in one place.
DEFAULT_CHECKPOINT = Path(model.__file__).parent / "weights" / "emoji-clip"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIP_", frozen=True)

    checkpoint: Path = Field(
        default=DEFAULT_CHECKPOINT, description="checkpoint directory (config.json, model.safetensors, vocab.txt)"
    )
    device: Literal["auto", "cuda", "cpu"] = Field(default="auto", description="auto = CUDA when available, else CPU")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto = bfloat16 on CUDA where supported (else float16), float32 on CPU"
    )
    host: str = Field(default="127.0.0.1", description="address clip-serve binds")
    port: int = Field(default=8000, ge=0, le=65535, description="port clip-serve binds")
    max_batch: int = Field(default=32, ge=1, description="most images in one forward pass")
    batch_wait_ms: float = Field(
        default=5.0, ge=0, description="how long a batch waits for more images once it has one"
    )
    batch_gather: Literal["incoming", "always"] = Field(
        default="incoming",
        description="when a batch waits: 'incoming' only while other requests' images are still decoding "
        "(a lone request starts at once), 'always' for CLIP_BATCH_WAIT_MS whatever is on its way",
    )
    batches_in_flight: int = Field(
        default=2,
        ge=1,
        description="most batches unfinished at once (handed to the model thread, results not back yet): with 2, "
        "a full batch is queued behind the running one and starts the moment it ends; 1 forms the next batch only "
        "once the last one's results are back",
    )
    compile: Literal["auto", "on", "off"] = Field(
        default="off",
        description="torch.compile the image tower at start-up: on a CPU for batches of 1, 2 and 4 images (the "
        "rest run eager); on CUDA as CUDA graphs for 1, 2, 4, ... images up to CLIP_MAX_BATCH, each batch padded "
        "up to the next of them. 'on' compiles them (start-up fails where it cannot), 'auto' keeps each size "
        "only where it measures faster than eager and falls back to eager with a warning where compiling fails",
    )
    max_queue: int = Field(default=256, ge=1, description="most images waiting for a batch; beyond it requests get 503")
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="largest request body, in bytes")
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="longest pause while a request body is still due; a client that stalls longer gets 408",
    )
    max_images: int = Field(default=16, ge=1, description="most images per request")
    max_labels: int = Field(default=64, ge=1, description="most labels per request")
    max_label_chars: int = Field(default=100, ge=1, description="longest label, in characters")
    max_templates: int = Field(default=16, ge=1, description="most templates per request")
    max_template_chars: int = Field(default=200, ge=1, description="longest template, in characters")
    max_texts: int = Field(default=64, ge=1, description="most texts per /embed/text request")
    max_text_chars: int = Field(default=1000, ge=1, description="longest /embed/text text, in characters")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="largest image, width x height (decompression bombs)"
    )
    max_request_pixels: int = Field(
        default=100_000_000,
        ge=1,
        description="most pixels one request's images may decode to, width x height summed (a JPEG counts at "
        "the reduced scale it decodes at)",
    )
    label_cache_size: int = Field(
        default=4096, ge=0, description="label embeddings kept (LRU, per label and template set)"
    )
    decode_threads: int = Field(default=2, ge=1, description="threads that decode uploaded images")
    api_key: SecretStr | None = Field(default=None, description="when set, required as 'Authorization: Bearer <key>'")
    cors_origins: str = Field(default="", description="comma-separated origins allowed by CORS (empty = CORS off)")
    log_level: str = Field(default="info", description="uvicorn and access log level")
    workers: int = Field(
        default=1,
        ge=1,
        description="server processes on one port, each with its own copy of the model and its own batcher; "
        "each gets available cores / workers PyTorch threads (clip-serve only)",
    )
    drain_seconds: int = Field(
        default=30,
        ge=0,
        description="after SIGTERM, how long requests in flight may still run; those still running then get "
        "503 shutting_down (clip-serve only)",
    )

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]


def describe_settings_error(error: ValidationError) -> str:
    """Each problem named by the environment variable that set it (CLIP_PORT='abc': ...), not by
    pydantic's field name; a secret's value is never repeated."""
    problems = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem.get("loc") else ""
        name = f"{Settings.model_config['env_prefix']}{field.upper()}" if field else "a setting"
        shown = (
            ""
            if field == "api_key" or "input" not in problem or isinstance(problem["input"], dict)
            else f"={problem['input']!r}"
        )
        problems.append(f"{name}{shown}: {problem['msg']}")
    return "invalid setting(s): " + "; ".join(problems)
