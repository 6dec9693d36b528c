"""The model library's exceptions: one base class, a few subclasses callers can tell apart."""


class ModelError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(ModelError):
    """A configuration is inconsistent or names an unknown field."""


class CheckpointError(ModelError):
    """A checkpoint directory or weights file is missing, broken, or does not fit the config."""


class TokenizerError(ModelError):
    """A vocabulary is missing or does not fit the config."""


class ImageError(ModelError):
    """An image cannot be decoded (not an image, truncated, unsupported format)."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than allowed (a decompression bomb, or over a configured limit)."""
