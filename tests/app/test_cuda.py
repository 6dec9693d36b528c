"""The engine and the batcher on the GPU, in half precision: run with `pytest -m cuda` on a
machine with CUDA (a ViT-B/16-size image tower with a MiniLM-size text tower, random weights);
skipped without one.

CLIP_TEST_CUDA_DEVICE=cpu runs them with the CPU standing in for the GPU, bf16 and fp16 included,
at the tiny shape: the dry run that proves these tests' code where no GPU is (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from app.compiling import CompilePlan, compile_plan, prepare_tower
from app.engine import DTYPES, ZeroShotEngine
from bench.gpu.common import LABELS, TINY_SHAPE, random_checkpoint
from model.clip import MAX_LOGIT_SCALE

from .batcher import running_batcher

pytestmark = pytest.mark.cuda

# bf16 keeps 8 significant bits (fp16 11), so with a trained CLIP's temperature of ~100 its
# embeddings' rounding (~1e-3 in a cosine after 12 layers) moves logits by ~0.1-0.2 and a
# probability by up to a quarter of that: 1e-2 holds for fp16 (measured 0.0012), not for bf16
# (measured 0.013 on an H200 at the ViT-B/16 shape, 0.015 on the CPU at the tiny one).
PROBABILITY_TOLERANCE = {"float16": 1e-2, "bfloat16": 3e-2}
CLEAR_MARGIN = 0.05  # fp32 top-1 minus top-2 probability above which half precision must agree
# The same text (or image) computed in another company may take other kernels, which round
# differently: with bf16's ~2^-9 relative rounding, grown to ~1% per element over the layers,
# 1 - cos stays near (1e-2)^2 / 2 = 5e-5 (measured under 1e-6 on an H200). 1e-3 leaves room for
# that and is far below what a real fault does (unmasked padding: 1 - cos of 0.2 and more here).
BF16_COSINE_GAP = 1e-3
HOT_LOGIT_SCALE = 10.0  # exp(10) = 22026: far above the clamp's 100


def make_engine(checkpoint, device, dtype: str) -> ZeroShotEngine:
    # no label cache: every call encodes its texts afresh, in the company it is given
    return ZeroShotEngine(checkpoint, device=str(device), dtype=dtype, label_cache_size=0)


def distinct_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) uint8: random 4×4 grids of colour blocks. A random ViT embeds these
    far enough apart to tell its rows apart (flat colours or plain noise come out too alike)."""
    generator = torch.Generator().manual_seed(seed)
    grids = torch.randint(0, 256, (count, 3, 4, 4), generator=generator, dtype=torch.uint8)
    return F.interpolate(grids, size=(size, size), mode="nearest")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1)


@contextmanager
def never_waiting_for_the_gpu(device: torch.device):
    """On CUDA, any operation that waits for the GPU raises within (torch.cuda.set_sync_debug_mode);
    the CPU stand-in has no GPU to wait for, and its torch build no such mode."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def assert_starts_without_waiting(engine: ZeroShotEngine, images: torch.Tensor, device: torch.device) -> None:
    """start_batch (the model thread's part) queues a batch without waiting for the GPU to finish the
    one before, so the model thread can hand it the next; finish_batch's rows equal run_batch's."""
    classes = engine.label_embeddings(LABELS)
    contexts = [classes, None, classes][: len(images)]
    expected = engine.run_batch(images, contexts)  # after this warm-up, no first-call allocation waits
    with never_waiting_for_the_gpu(device):
        started = engine.start_batch(images, contexts)
    for row, reference in zip(engine.finish_batch(started), expected):
        torch.testing.assert_close(row, reference, rtol=0, atol=0)


def probabilities(engine: ZeroShotEngine, images: torch.Tensor) -> torch.Tensor:
    return engine.logits(engine.encode_images(images), engine.label_embeddings(LABELS)).softmax(dim=-1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, cuda_shape):
    # a trained CLIP's temperature (exp(4.6) = 99.5, just under the clamp): it spreads a random
    # model's probabilities far from uniform, so comparing them means something
    return random_checkpoint(tmp_path_factory.mktemp("cuda-ckpt"), cuda_shape, logit_scale=4.6)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return make_engine(checkpoint, "cpu", "float32")


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def half_dtype(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def half_engine(checkpoint, cuda_device, half_dtype):
    return make_engine(checkpoint, cuda_device, half_dtype)


@pytest.fixture(scope="module")
def bf16_engine(checkpoint, cuda_device):
    return make_engine(checkpoint, cuda_device, "bfloat16")


@pytest.fixture(scope="module")
def images(reference):
    return distinct_images(12, reference.config.vision.image_size)


def test_half_precision_engine_matches_fp32_on_the_cpu(half_engine, half_dtype, reference, images, cuda_device):
    assert half_engine.clip.device.type == cuda_device.type and half_engine.clip.dtype == DTYPES[half_dtype]
    expected = probabilities(reference, images)
    got = probabilities(half_engine, images)
    torch.testing.assert_close(got, expected, rtol=0, atol=PROBABILITY_TOLERANCE[half_dtype])
    top_two = expected.topk(2, dim=-1).values
    clear = top_two[:, 0] - top_two[:, 1] > CLEAR_MARGIN
    assert clear.sum() >= 3, "too few images with a clear winner for the top-1 check to mean anything"
    assert torch.equal(got.argmax(dim=-1)[clear], expected.argmax(dim=-1)[clear])


def test_padded_label_batch_equals_labels_one_by_one_in_bf16(bf16_engine):
    labels = ["cat", "a dog", "an apple on a table", "a very large orange cat asleep on a red velvet sofa"]
    _, mask = bf16_engine.tokenizer(labels)
    assert len(set(mask.sum(dim=1).tolist())) == len(labels)  # all lengths differ: padding matters
    batched = bf16_engine.label_embeddings(labels)
    one_by_one = torch.cat([bf16_engine.label_embeddings([label]) for label in labels])
    assert cosine(batched, one_by_one).min() > 1 - BF16_COSINE_GAP


def test_padding_tokens_do_not_change_a_text_embedding_in_bf16(bf16_engine):
    """The text tower's attention and pooling masks. The image tower has no mask (every patch is
    real); its counterpart, an image's embedding independent of its batch, is checked with the
    batcher below."""
    clip, tokenizer = bf16_engine.clip, bf16_engine.tokenizer
    long_text = " ".join(["word"] * tokenizer.context_length)  # fills the context
    ids, mask = tokenizer(["a cat", long_text])
    assert mask[0].sum() < mask.shape[1] // 2  # the short text is mostly padding
    scrambled = ids.clone()  # whatever the padded positions hold must not matter
    scrambled[~mask] = torch.randint(1000, tokenizer.vocab_size, (int((~mask).sum()),))
    with torch.inference_mode():
        alone = clip.encode_text(*tokenizer(["a cat"]))
        padded = clip.encode_text(ids, mask)[:1]
        garbage_padded = clip.encode_text(scrambled, mask)[:1]
    assert cosine(padded, alone).item() > 1 - BF16_COSINE_GAP
    assert cosine(garbage_padded, alone).item() > 1 - BF16_COSINE_GAP


def test_logit_scale_clamp_holds_in_bf16(tmp_path_factory, cuda_shape, cuda_device, images):
    hot = random_checkpoint(tmp_path_factory.mktemp("hot-ckpt"), cuda_shape, logit_scale=HOT_LOGIT_SCALE)
    engine = make_engine(hot, cuda_device, "bfloat16")
    assert engine.clip.logit_scale.item() > MAX_LOGIT_SCALE  # stored as saved; clamped where used
    image_embeddings = engine.encode_images(images)
    label_embeddings = engine.label_embeddings(LABELS)
    logits = engine.logits(image_embeddings, label_embeddings)
    cosines = image_embeddings.float().cpu() @ label_embeddings.float().cpu().t()
    assert cosines.abs().max() > 0.05  # unclamped, such logits would be in the thousands
    # 100 in bf16: the clamped scale rounds to 4.59375 and its exp to 99.0 (1% off); a bf16 dot
    # product of unit vectors may be off by ~2^-8 absolute (0.4 once times 100)
    torch.testing.assert_close(logits, 100 * cosines, rtol=2e-2, atol=0.5)


def test_batcher_gives_concurrent_requests_their_own_rows(bf16_engine, images):
    """Requests cut across batches, some classifying against their own labels (the service's path:
    start_batch queues their logits with the batch and its copy to the CPU, and the finisher waits for
    the device, then splits the rows), one asking for embeddings only."""
    request_sizes = [1, 3, 2, 2]  # 8 images in batches of 3: batches cut across requests
    images = images[: sum(request_sizes)]
    requests = list(torch.split(images, request_sizes))
    label_sets = [LABELS[:2], None, LABELS[2:7], LABELS]
    classes = [None if labels is None else bf16_engine.label_embeddings(labels) for labels in label_sets]
    alone = torch.cat([bf16_engine.encode_images(image[None]) for image in images])
    apart = cosine(alone[:, None], alone[None, :]) - torch.eye(len(images))
    assert apart.max() < 1 - 10 * BF16_COSINE_GAP  # distinct enough that a swapped row would show
    batch_sizes = []

    async def scenario():
        async with running_batcher(
            bf16_engine.start_batch,
            batch_sizes,
            finish_batch=bf16_engine.finish_batch,
            max_batch=3,
            max_wait=0.2,
            max_queue=8,
        ) as batcher:
            return await asyncio.gather(
                *(batcher.submit(list(request), request_classes) for request, request_classes in zip(requests, classes))
            )

    results = asyncio.run(scenario())
    assert batch_sizes == [3, 3, 2]
    assert [len(rows) for rows in results] == request_sizes
    image = 0
    for rows, request_classes in zip(results, classes):
        for row in rows:
            if request_classes is None:
                assert cosine(row, alone[image]).item() > 1 - BF16_COSINE_GAP
            else:  # nearest to this image's logits computed alone with its request's labels, of all images'
                every_image = bf16_engine.logits(alone, request_classes)
                distances = (every_image - row).norm(dim=1)
                assert distances.argmin().item() == image
                # unit vectors within the cosine gap differ by at most sqrt(2 * gap),
                # so logits differ by at most the temperature times that
                assert distances[image] <= bf16_engine.clip.temperature().item() * (2 * BF16_COSINE_GAP) ** 0.5
            image += 1


def test_the_eager_tower_starts_a_batch_without_waiting_for_the_gpu(bf16_engine, images, cuda_device):
    assert_starts_without_waiting(bf16_engine, images[:3], cuda_device)


def test_cuda_graphs_serve_every_batch_size_padded_and_equal_eager(tmp_path_factory, cuda_device):
    """CLIP_COMPILE on CUDA: CUDA graphs (CUDA's plan: torch.compile "reduce-overhead", padding) for
    batches of 2 and 4, batches of 1 and 3 padded up to them; each as the eager tower computes it,
    and no batch compiles anew; a batch starts without waiting for the GPU. Two sizes at the tiny
    shape: each compile costs seconds of this step's minute. On the CPU stand-in, dynamo's eager
    backend: the padding path, not the graphs."""
    checkpoint = random_checkpoint(tmp_path_factory.mktemp("graphs-ckpt"), TINY_SHAPE)
    engine = make_engine(checkpoint, cuda_device, "bfloat16")
    cuda_plan = compile_plan(torch.device("cuda"), max_batch=4)
    options = cuda_plan.options if cuda_device.type == "cuda" else {"backend": "eager"}
    prepare_tower(engine, "on", max_batch=4, plan=CompilePlan([2, 4], options, cuda_plan.pad))
    assert engine.compiled_batch_sizes == [2, 4] and engine.pads_to_compiled
    images = distinct_images(4, engine.config.vision.image_size, seed=3)
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            for size in (4, 3, 1, 2, 3):  # back and forth between the graphs, padded and not
                graphs = engine.encode_images(images[:size])
                assert graphs.shape == (size, engine.config.embed_dim)
                gap = 1 - cosine(graphs, engine.eager_tower(images[:size].to(cuda_device)))
                assert gap.max().item() < BF16_COSINE_GAP, (size, gap)
            assert_starts_without_waiting(engine, images[:3], cuda_device)  # the graphs do not wait either
    finally:
        torch._dynamo.reset()
