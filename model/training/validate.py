"""Validation: the validation-style images against every concept's class prompt, as the server
would classify them (composited over white, normalised, the CLIP head's logits)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..pixels import over_white
from .bundle import Bundle
from .towers import TrainedTowers

TOP_K = 5


@dataclass(frozen=True)
class Validation:
    top1: float  # share of images whose own concept has the highest logit
    top5: float  # ... is among the five highest (all of them, with five concepts or fewer)
    loss: float  # mean cross-entropy of the logits against the image's own concept

    def history_fields(self) -> dict[str, float]:
        return {"val_top1": self.top1, "val_top5": self.top5, "val_loss": self.loss}


@torch.no_grad()
def validate(towers: TrainedTowers, bundle: Bundle, device: torch.device, batch_size: int = 512) -> Validation | None:
    """Top-1, top-5 and mean cross-entropy over all concepts; None without validation images."""
    if len(bundle.val_images) == 0:
        return None
    classes = towers.embed_texts(bundle.class_features.to(device))
    correct, in_top_k, loss = 0, 0, 0.0
    for start in range(0, len(bundle.val_images), batch_size):
        pixels = towers.normalize(over_white(bundle.val_images[start : start + batch_size].to(device)))
        logits = towers.similarity_logits(towers.embed_images(pixels), classes).float()
        targets = bundle.val_concepts[start : start + batch_size].to(device)
        ranked = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices
        correct += int((logits.argmax(dim=1) == targets).sum())
        in_top_k += int((ranked == targets[:, None]).any(dim=1).sum())
        loss += float(F.cross_entropy(logits, targets, reduction="sum"))
    count = len(bundle.val_images)
    return Validation(top1=correct / count, top5=in_top_k / count, loss=loss / count)
