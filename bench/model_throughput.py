"""Image-tower throughput: this library's ViT against the seed's, same size, same weights, one run.

    python bench/model_throughput.py                 # CPU fp32 (and CUDA bf16 when a GPU is present)
    python bench/model_throughput.py --size small --batch 32

Prints images/s for each and the ratio ours / seed. Absolute numbers on shared machines are
noise; the ratio, measured in the same process on the same inputs, is the figure to report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "seed"))
import seed_clip  # noqa: E402

from model.config import VisionConfig  # noqa: E402
from model.vision import ViT  # noqa: E402

SIZES = {
    "base": dict(image_size=224, patch_size=16, width=768, num_layers=12, num_heads=12, mlp_dim=3072),  # the seed's
    "small": dict(image_size=64, patch_size=8, width=256, num_layers=6, num_heads=4, mlp_dim=1024),  # the emoji model's
}


def build_pair(size: str):
    config = VisionConfig(**SIZES[size])
    seed = seed_clip.ViT(
        image_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.width,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        mlp_hidden_dim=config.mlp_dim,
    )
    ours = ViT(config)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return seed.eval(), ours.eval(), config


def measure(module, pixels, iterations: int, device: str) -> float:
    """Median images/s over ``iterations`` timed forward passes, after two warm-up passes."""

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    timings = []
    with torch.inference_mode():
        for step in range(iterations + 2):
            sync()
            start = time.perf_counter()
            module(pixels)
            sync()
            if step >= 2:
                timings.append(time.perf_counter() - start)
    return pixels.shape[0] / statistics.median(timings)


def run(size: str, batch: int, iterations: int, device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    seed, ours, config = build_pair(size)
    seed, ours = seed.to(device, dtype), ours.to(device, dtype)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, device=device, dtype=dtype)
    with torch.inference_mode():
        difference = (seed(pixels).float() - ours(pixels).float()).abs().max().item()
    rates = {}
    for name, module in (("seed", seed), ("ours", ours), ("seed again", seed), ("ours again", ours)):
        rates[name] = measure(module, pixels, iterations, device)  # interleaved: drift hits both alike
    seed_rate = statistics.mean([rates["seed"], rates["seed again"]])
    ours_rate = statistics.mean([rates["ours"], rates["ours again"]])
    label = f"{size} ({config.image_size}px/{config.patch_size}, width {config.width}, {config.num_layers} layers)"
    print(
        f"{device:4s} {str(dtype).removeprefix('torch.'):8s} batch {batch:3d}  {label}: "
        f"seed {seed_rate:8.1f} img/s  ours {ours_rate:8.1f} img/s  ratio {ours_rate / seed_rate:.2f}x  "
        f"(max |diff| {difference:.1e})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=[*SIZES, "all"], default="all")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 for base, 64 for small on CPU")
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    sizes = list(SIZES) if args.size == "all" else [args.size]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for size in sizes:
        batch = args.batch or (8 if size == "base" else 64)
        run(size, batch, args.iterations, "cpu", torch.float32)
        if torch.cuda.is_available():
            run(size, args.batch or 128, args.iterations * 4, "cuda", torch.bfloat16)


if __name__ == "__main__":
    main()
