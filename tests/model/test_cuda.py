"""GPU paths: run with `pytest -m cuda` on a machine with CUDA; skipped without one."""
import pytest
import torch

import model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_precision_matches_cpu_fp32(tiny_checkpoint, dtype):
    cpu = model.load_pretrained(tiny_checkpoint)
    gpu = model.load_pretrained(tiny_checkpoint, device="cuda", dtype=dtype)
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    tokenizer = model.load_tokenizer(tiny_checkpoint)
    torch.manual_seed(0)
    uint8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ids, mask = tokenizer(["a photo of a cat", "a dog", "a rocket to the moon"])
    with torch.inference_mode():
        expected = cpu.encode_image(model.normalize_pixels(uint8, cpu.config)), cpu.encode_text(ids, mask)
        pixels = model.normalize_pixels(uint8.cuda(), gpu.config, dtype)  # normalised on the GPU
        got = gpu.encode_image(pixels), gpu.encode_text(ids.cuda(), mask.cuda())
    for ours, reference in zip(got, expected):
        assert torch.nn.functional.cosine_similarity(ours.float().cpu(), reference).min() > 0.99
