"""The training recipe: every choice that shapes a trained model, saved as JSON inside the bundle."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

CAPTION_SAMPLING = ("uniform", "specific")
TEXT_PROJECTIONS = ("learned", "identity")


@dataclass
class Recipe:
    # model: the image tower (VisionConfig fields; pack fills in model.convert.minilm.DEFAULT_VISION
    # for those not given) and the shared embedding size; text_width comes from the frozen text tower
    vision: dict = field(default_factory=dict)
    embed_dim: int = 384
    text_width: int = 0
    logit_scale_init: float = math.log(1 / 0.07)
    # "learned": a trained linear map of the frozen text tower's output. "identity": held at the
    # identity (embed_dim must equal text_width), so images are trained into the text tower's own
    # space, where synonyms it knows ("kitty", "cat") already lie close together.
    text_projection: str = "learned"
    # optimisation
    epochs: int = 12
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    max_steps: int | None = None  # stop after this many steps in all (smoke runs, tests)
    # a wall-time budget for the training steps, in seconds: after a few steps the loop measures
    # its step rate and sizes the schedule (warmup + cosine) to end inside the budget. For a
    # host whose speed is not known in advance (a lent GPU); None: the schedule is epochs * steps.
    max_seconds: float | None = None
    augment: dict = field(default_factory=dict)  # model.training.augment.AugmentConfig fields to change
    # the loss: symmetric InfoNCE over the batch's captions, plus (weighted) each image against the
    # class prompt of every concept seen in training: a thousand-way signal instead of a batch-wide one
    concept_loss_weight: float = 0.0
    # how an image's caption is drawn: "uniform", or "specific" (weight 1 / number of concepts whose
    # images carry that caption, so "a drawing of face", shared by a hundred smileys, is rarely drawn)
    caption_sampling: str = "uniform"
    # data (used by pack)
    skin_tones: bool = False  # also train on skin-tone variants (extra images of their concept)
    limit_images: int | None = None  # keep only the first N training images (tests)
    val_template: str = "an emoji of {}."  # class prompts for the per-epoch validation accuracy

    def __post_init__(self):
        if self.text_projection not in TEXT_PROJECTIONS:
            raise ConfigError(
                f"text_projection must be one of {', '.join(TEXT_PROJECTIONS)}, not {self.text_projection!r}"
            )
        if self.caption_sampling not in CAPTION_SAMPLING:
            raise ConfigError(
                f"caption_sampling must be one of {', '.join(CAPTION_SAMPLING)}, not {self.caption_sampling!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown recipe field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def updated(self, **changes: Any) -> Recipe:
        """A copy with the given fields changed (None values are ignored: 'not given on the command line')."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
