"""The service's domain errors. No HTTP here: app/errors.py maps each to a status code.

Each carries a short machine-readable ``code`` and a message that says what to fix.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "service_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(ServiceError):
    """The request is well-formed but its content breaks a rule (labels, templates, counts)."""

    code = "invalid_input"


class UnsupportedImage(ServiceError):
    """An upload is not an image, is truncated, or is in a format Pillow cannot read."""

    code = "unsupported_image"


class ImageTooLarge(ServiceError):
    """An image has more pixels than CLIP_MAX_IMAGE_PIXELS."""

    code = "image_too_large"


class RequestTooLarge(ServiceError):
    """A request's images decode to more pixels in all than CLIP_MAX_REQUEST_PIXELS."""

    code = "too_many_pixels"


class UploadTooLarge(ServiceError):
    """The request body is over CLIP_MAX_UPLOAD_BYTES."""

    code = "upload_too_large"


class Unauthorized(ServiceError):
    code = "unauthorized"


class Overloaded(ServiceError):
    """The batch queue is full; the client should retry after ``retry_after`` seconds."""

    code = "queue_full"
    retry_after = 1


class NotReady(ServiceError):
    """The model is still loading or failed to load."""

    code = "not_ready"
    retry_after = 2


class ShuttingDown(ServiceError):
    """The server is stopping: the request came too late for the drain, or outlasted it."""

    code = "shutting_down"
    retry_after = 2

    def __init__(
        self,
        message: str = "the server is shutting down; retry shortly (another replica or the restarted "
        "server will answer)",
    ):
        super().__init__(message)


class StartupError(ServiceError):
    """Settings or checkpoint that stop the server before it binds."""

    code = "startup_error"
