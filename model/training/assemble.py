"""clip-train assemble: a run's trained tensors + the frozen text tower -> a checkpoint directory.

Needs the full install (safetensors, tokenizers, Pillow for the training curves' PNG).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..checkpoint import check_state_dict, save_pretrained
from ..errors import ModelError
from ..eval import choose_templates
from .outputs import HISTORY_FILE, load_trained
from .pack import base_model
from .plot import plot_history


def assemble(
    run_dir: str | Path,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    base: str | Path | None = None,
    templates: list[str] | None = None,
) -> Path:
    """Trained tensors + the frozen text tower -> a checkpoint directory (fp16 safetensors).
    With DATA_DIR, zero_shot_templates are the candidates that do best on the validation style."""
    recipe, tensors = load_trained(run_dir)
    with tempfile.TemporaryDirectory() as scratch:  # the base's vocab.txt lives here until saved
        clip, tokenizer = base_model(recipe, base, scratch)
        state = clip.state_dict()
        unknown = sorted(set(tensors) - set(state))
        if unknown:
            raise ModelError(f"trained tensors in {run_dir} that the checkpoint lacks: {', '.join(unknown[:5])}")
        check_state_dict(clip, {**state, **tensors}, source=str(run_dir))
        clip.load_state_dict({**state, **tensors})
        clip.eval()
        if templates:
            clip.config.zero_shot_templates = list(templates)
        elif data_dir is not None:
            clip.config.zero_shot_templates = choose_templates(clip, tokenizer, data_dir)
        out = save_pretrained(clip, tokenizer, out_dir, dtype=torch.float16)
    history_path = Path(run_dir) / HISTORY_FILE
    if history_path.exists():
        plot_history(json.loads(history_path.read_text()), Path(run_dir) / "training.png")
    return out
