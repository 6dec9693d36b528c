"""The training loss: symmetric InfoNCE over a batch's captions, plus (weighted) each image
against the class prompt of every concept seen in training (the concept loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bundle import Bundle


def contrastive_loss(logits: torch.Tensor, concepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE; two images of one concept are each other's positives (their captions
    describe both), so targets spread evenly over a row's same-concept columns.
    Returns the loss and the image->text top-1 accuracy."""
    same = (concepts[:, None] == concepts[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss = (F.cross_entropy(logits.float(), targets) + F.cross_entropy(logits.float().t(), targets)) / 2
    accuracy = same.gather(1, logits.argmax(dim=1, keepdim=True)).mean()
    return loss, accuracy


def seen_concepts(bundle: Bundle) -> tuple[torch.Tensor, torch.Tensor]:
    """(concepts with training images, and for every concept its row among them or -1): the
    concept loss's classes. Unseen concepts stay out, their names as unknown as their images."""
    seen = torch.unique(bundle.train_concepts)
    row = torch.full((len(bundle.class_features),), -1, dtype=torch.long)
    row[seen] = torch.arange(len(seen))
    return seen, row


def concept_loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each image's logits over the seen concepts' class prompts against its own
    concept's row (seen_concepts)."""
    return F.cross_entropy(logits.float(), rows)
