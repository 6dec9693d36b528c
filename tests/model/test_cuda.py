"""GPU paths: run with `pytest -m cuda` on a machine with CUDA; skipped without one.

CLIP_TEST_CUDA_DEVICE=cpu runs them with the CPU standing in for the GPU (same code, half
precision too): the dry run that proves these tests work where no GPU is (tests/conftest.py).
"""

import pytest
import torch

import model

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_precision_matches_cpu_fp32(tiny_checkpoint, cuda_device, dtype):
    cpu = model.load_pretrained(tiny_checkpoint)
    gpu = model.load_pretrained(tiny_checkpoint, device=cuda_device, dtype=dtype)
    assert gpu.device.type == cuda_device.type and gpu.dtype == dtype
    tokenizer = model.load_tokenizer(tiny_checkpoint)
    torch.manual_seed(0)
    uint8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ids, mask = tokenizer(["a photo of a cat", "a dog", "a rocket to the moon"])
    with torch.inference_mode():
        expected = cpu.encode_image(model.normalize_pixels(uint8, cpu.config)), cpu.encode_text(ids, mask)
        pixels = model.normalize_pixels(uint8.to(cuda_device), gpu.config, dtype)  # normalised on the GPU
        got = gpu.encode_image(pixels), gpu.encode_text(ids.to(cuda_device), mask.to(cuda_device))
    for ours, reference in zip(got, expected):
        assert torch.nn.functional.cosine_similarity(ours.float().cpu(), reference).min() > 0.99
