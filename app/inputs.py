"""Checks on what a client sends (labels, templates, counts), with messages that say what to fix."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence

from .exceptions import InvalidInput
from .settings import Settings


def check_unicode(text: str, what: str) -> None:
    """A lone UTF-16 surrogate ("\\ud800" in JSON) decodes into a Python str but is not text: it
    cannot be tokenised, encoded or echoed back. Refuse it by name instead of failing later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInput(
            f"{what} holds {text[error.start]!r}, a lone UTF-16 surrogate, at character {error.start + 1}: "
            "send valid Unicode (a surrogate must be half of a pair)",
            "invalid_text",
        ) from None


def labels_from_form(values: Sequence[str]) -> list[str]:
    """Repeated ``labels`` fields, or one field holding a JSON array of strings."""
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            parsed = json.loads(values[0])
        except json.JSONDecodeError as error:
            raise InvalidInput(
                f"labels looks like a JSON array but does not parse: {error}", "invalid_labels"
            ) from None
        if not isinstance(parsed, list) or not all(isinstance(label, str) for label in parsed):
            raise InvalidInput('a JSON labels field must be an array of strings, e.g. ["cat", "dog"]', "invalid_labels")
        return parsed
    return list(values)


def clean_labels(labels: Sequence[str], settings: Settings) -> list[str]:
    """Whitespace-normalised labels; refuses none, empty, too long, too many and duplicates
    (case-insensitive: the tokenizer is uncased, so 'Cat' and 'cat' are the same class)."""
    if not labels:
        raise InvalidInput("no labels: send at least one class name in 'labels'", "no_labels")
    if len(labels) > settings.max_labels:
        raise InvalidInput(f"{len(labels)} labels, more than the limit of {settings.max_labels}", "too_many_labels")
    cleaned: list[str] = []
    seen: dict[str, str] = {}
    for position, label in enumerate(labels):
        check_unicode(label, f"label {position + 1}")
        label = " ".join(label.split())
        if not label:
            raise InvalidInput(f"label {position + 1} is empty or only whitespace", "empty_label")
        if len(label) > settings.max_label_chars:
            raise InvalidInput(
                f"label {position + 1} has {len(label)} characters, more than the limit of {settings.max_label_chars}",
                "label_too_long",
            )
        key = label.casefold()
        if key in seen:
            raise InvalidInput(
                f"label {label!r} repeats {seen[key]!r} (labels are compared case-insensitively)", "duplicate_label"
            )
        seen[key] = label
        cleaned.append(label)
    return cleaned


def check_labels_known(labels: Sequence[str], word_pieces: Callable[[str], list[str]]) -> None:
    """Refuses a label whose own WordPiece tokens (before any template) are none or all [UNK]: it
    would mean nothing to the text tower, and every such label would get the same embedding."""
    for position, label in enumerate(labels, start=1):
        pieces = word_pieces(label)
        if all(piece == "[UNK]" for piece in pieces):
            found = f"only {len(pieces)} unknown token(s)" if pieces else "no tokens at all"
            raise InvalidInput(
                f"label {position} ({label!r}) has {found} in the model's vocabulary (emoji, "
                "control and zero-width characters are not in it): name the class in words",
                "unknown_label",
            )


def clean_templates(templates: Sequence[str] | None, settings: Settings) -> list[str] | None:
    """None = the checkpoint's own templates. Each given template must hold '{}' for the label."""
    if not templates:
        return None
    if len(templates) > settings.max_templates:
        raise InvalidInput(
            f"{len(templates)} templates, more than the limit of {settings.max_templates}", "too_many_templates"
        )
    for position, template in enumerate(templates):
        check_unicode(template, f"template {position + 1}")
        if len(template) > settings.max_template_chars:
            raise InvalidInput(
                f"template {position + 1} has {len(template)} characters, more than the limit of "
                f"{settings.max_template_chars}",
                "template_too_long",
            )
        if "{}" not in template:
            raise InvalidInput(
                f"template {template!r} has no '{{}}' where the label goes, e.g. 'a photo of a {{}}.'", "bad_template"
            )
    return list(templates)


def clean_texts(texts: Sequence[str], settings: Settings) -> list[str]:
    if not texts:
        raise InvalidInput("no texts: send at least one string in 'texts'", "no_texts")
    if len(texts) > settings.max_texts:
        raise InvalidInput(f"{len(texts)} texts, more than the limit of {settings.max_texts}", "too_many_texts")
    for position, text in enumerate(texts):
        check_unicode(text, f"text {position + 1}")
        if len(text) > settings.max_text_chars:
            raise InvalidInput(
                f"text {position + 1} has {len(text)} characters, more than the limit of {settings.max_text_chars}",
                "text_too_long",
            )
    if any(not text.strip() for text in texts):
        raise InvalidInput("a text is empty or only whitespace", "empty_text")
    return list(texts)


def check_image_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise InvalidInput("no images: send one or more image files in 'images'", "no_images")
    if count > settings.max_images:
        raise InvalidInput(f"{count} images, more than the limit of {settings.max_images}", "too_many_images")


def check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise InvalidInput(f"top_k must be at least 1, got {top_k}", "bad_top_k")


def decode_image_field(data: str, filename: str | None, position: int) -> bytes:
    """One image of a JSON body: its filename checked (it is echoed back), its base64 decoded."""
    if filename is not None:
        check_unicode(filename, f"image {position}'s filename")
    return decode_base64(data, filename or f"image {position}")


def decode_base64(data: str, filename: str) -> bytes:
    if "," in data[:100] and data.startswith("data:"):  # a data URL: keep what follows the comma
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInput(f"{filename!r} is not valid base64: {error}", "invalid_base64") from None
