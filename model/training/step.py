"""One optimizer step on a batch, in the precision and attention kernel the host runs best."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .loss import concept_loss, contrastive_loss


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pixels: torch.Tensor,
    caption_features: torch.Tensor,
    concepts: torch.Tensor,
    concept_weight: float = 0.0,
    concept_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    math_attention: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns (loss, batch top-1). ``concept_targets`` (the seen
    concepts' class-prompt features, each concept's row among them: seen_concepts) adds the concept
    loss with ``concept_weight``; without it no concept logits are computed."""
    device = pixels.device
    text_sets = [caption_features] + ([concept_targets[0]] if concept_targets is not None else [])
    with (
        torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
        attention_kernel(math_attention),
    ):
        logits, *concept_logits = model(pixels, *text_sets)
    loss, accuracy = contrastive_loss(logits, concepts.to(device))
    if concept_targets is not None:
        loss = loss + concept_weight * concept_loss(concept_logits[0], concept_targets[1][concepts].to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, accuracy


def training_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for float32. "auto": bfloat16 on CUDA, and on CPUs with native
    bfloat16 matrix units (avx512_bf16 / amx_bf16), where it is several times faster than float32."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None


def attention_kernel(math_attention: bool):
    """The plain-math attention where asked (on CPU, train_bundle asks): at these short sequences the
    fused CPU kernel's backward pass took 44 % of a bf16 training step under torch.profiler."""
    return sdpa_kernel(SDPBackend.MATH) if math_attention else contextlib.nullcontext()
