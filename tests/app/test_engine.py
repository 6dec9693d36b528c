"""The engine and batcher in-process: logits independent of company, the label cache, the batcher."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from app.batching import DynamicBatcher
from app.engine import LabelCache, ZeroShotEngine
from app.exceptions import Overloaded

from .server import image_bytes


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return ZeroShotEngine(tiny_checkpoint, device="cpu", dtype="auto", label_cache_size=2)


def test_logits_independent_of_other_labels_and_images(engine):
    pixels = torch.stack([engine.decode_image(image_bytes(color)) for color in ((200, 0, 0), (0, 90, 200), (9, 9, 9))])
    alone_image = engine.encode_images(pixels[:1])
    batch_images = engine.encode_images(pixels)
    engine.label_cache = LabelCache(0)  # every call encodes afresh, padded with different company
    alone = engine.logits(alone_image, engine.label_embeddings(["cat"]))[0, 0]
    among = engine.logits(batch_images, engine.label_embeddings(["a very long label indeed", "cat", "x"]))[0, 1]
    assert abs(float(alone) - float(among)) < 1e-5


def test_label_cache_is_a_bounded_lru(engine):
    calls = []
    engine.label_cache = LabelCache(2)
    engine.on_cache_lookup = lambda hits, misses: calls.append((hits, misses))
    first = engine.label_embeddings(["cat", "dog"])
    again = engine.label_embeddings(["dog", "cat"])
    assert torch.equal(first.flip(0), again)
    engine.label_embeddings(["cow"])          # evicts the least recently used ("dog")
    engine.label_embeddings(["cat", "dog"])
    assert calls == [(0, 2), (2, 0), (0, 1), (1, 1)]
    assert len(engine.label_cache) == 2
    engine.label_embeddings(["cat"], ["a drawing of a {}."])  # another template set is another key
    assert calls[-1] == (0, 1)


def test_batcher_closes_on_size_and_refuses_beyond_the_queue(engine):
    sizes = []

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(engine.encode_images, pool, max_batch=3, max_wait=30, max_queue=5,
                                     on_batch=lambda size, waits: sizes.append(size))
            batcher.start()
            image = engine.decode_image(image_bytes())
            first = asyncio.gather(*(batcher.submit([image]) for _ in range(3)))
            results = await asyncio.wait_for(first, 10)  # closed on size, not after 30 s
            waiting = asyncio.ensure_future(batcher.submit([image, image]))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await batcher.submit([image] * 4)
            await batcher.close()  # runs what is queued before stopping
            return results, await waiting

    results, drained = asyncio.run(scenario())
    assert sizes == [3, 2]
    assert all(torch.allclose(r[0], results[0][0]) for r in results)
    assert len(drained) == 2
