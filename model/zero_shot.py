"""Class embeddings for zero-shot classification, with CLIP's prompt ensembling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .clip import CLIP
from .errors import ModelError
from .tokenizer import Tokenizer

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def fill_templates(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts in label-major order: label 0 through every template, then label 1, ..."""
    for template in templates:
        if "{}" not in template:
            raise ModelError(f"template {template!r} has no '{{}}' where the label goes")
    return [template.replace("{}", label) for label in labels for template in templates]


@torch.inference_mode()
def encode_texts(clip: CLIP, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Normalised embeddings of texts as given, encoded in chunks of ``batch_size``."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[start : start + batch_size])
        chunks.append(clip.encode_text(ids, mask))
    return torch.cat(chunks)


@torch.inference_mode()
def label_embeddings(
    clip: CLIP,
    tokenizer: Tokenizer,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
) -> torch.Tensor:
    """(C, D): each label through each template, embeddings normalised, averaged over the
    templates, renormalised (CLIP's prompt ensembling)."""
    if not labels:
        raise ModelError("no labels")
    if not templates:
        raise ModelError("no templates")
    prompts = fill_templates(labels, templates)
    embeddings = encode_texts(clip, tokenizer, prompts, batch_size)
    embeddings = embeddings.view(len(labels), len(templates), -1).mean(dim=1)
    return F.normalize(embeddings, dim=-1)
