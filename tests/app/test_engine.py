"""The engine and batcher in-process: logits independent of company, the label cache, the batcher."""

from __future__ import annotations

import asyncio

import pytest
import torch

from app.engine import LabelCache, ZeroShotEngine
from app.exceptions import Overloaded, ShuttingDown

from .batcher import running_batcher
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
    engine.label_embeddings(["cow"])  # evicts the least recently used ("dog")
    engine.label_embeddings(["cat", "dog"])
    assert calls == [(0, 2), (2, 0), (0, 1), (1, 1)]
    assert len(engine.label_cache) == 2
    engine.label_embeddings(["cat"], ["a drawing of a {}."])  # another template set is another key
    assert calls[-1] == (0, 1)


def test_batcher_closes_on_size_and_refuses_beyond_the_queue(engine):
    sizes = []

    async def scenario():
        async with running_batcher(engine.run_batch, sizes, max_batch=3, max_wait=30, max_queue=5) as batcher:
            image = engine.decode_image(image_bytes())
            first = asyncio.gather(*(batcher.submit([image]) for _ in range(3)))
            results = await asyncio.wait_for(first, 10)  # closed on size, not after 30 s
            waiting = asyncio.ensure_future(batcher.submit([image, image]))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await batcher.submit([image] * 4)
        return results, await waiting  # closing ran what was queued before stopping

    results, drained = asyncio.run(scenario())
    assert sizes == [3, 2]
    assert all(torch.allclose(r[0], results[0][0]) for r in results)
    assert len(drained) == 2


def test_a_request_cancelled_before_its_batch_runs_costs_no_forward_pass_and_closing_refuses(engine):
    """The drain's end cancels requests in flight: their queued images are dropped, not run, and
    a request after close is told the server is shutting down."""
    sizes = []

    async def scenario():
        async with running_batcher(engine.run_batch, sizes, max_batch=4, max_wait=30, max_queue=4) as batcher:
            image = engine.decode_image(image_bytes())
            cut_off = asyncio.ensure_future(batcher.submit([image, image]))
            await asyncio.sleep(0)
            cut_off.cancel()
            await asyncio.sleep(0)
        with pytest.raises(ShuttingDown):
            await batcher.submit([image])

    asyncio.run(scenario())
    assert sizes == []


def test_one_batch_serves_requests_with_different_labels_and_embedding_requests(engine, monkeypatch):
    """run_batch against the per-request path: each image's logits row (its own request's labels)
    or, for a request without labels, its embedding; split where one request's images end."""
    monkeypatch.setattr(engine, "label_cache", LabelCache(16))
    pixels = torch.stack(
        [
            engine.decode_image(image_bytes(color))
            for color in ((200, 0, 0), (0, 90, 200), (9, 9, 9), (250, 250, 0), (0, 160, 60))
        ]
    )
    cats, vehicles = engine.label_embeddings(["cat", "dog"]), engine.label_embeddings(["car", "bus", "a red rocket"])
    contexts = [
        cats,
        cats,
        None,
        vehicles,
        cats.clone(),
    ]  # four requests; the last shares the first's labels, not its tensor
    outputs = engine.run_batch(pixels, contexts)
    assert [tuple(row.shape) for row in outputs] == [(2,), (2,), (24,), (3,), (2,)]
    alone = [engine.encode_images(pixels[i : i + 1]) for i in range(5)]
    for index, classes in enumerate(contexts):
        expected = alone[index][0] if classes is None else engine.logits(alone[index], classes)[0]
        torch.testing.assert_close(outputs[index], expected.float(), rtol=0, atol=1e-5)


def test_cached_label_embeddings_answer_only_when_every_label_is_cached(engine, monkeypatch):
    monkeypatch.setattr(engine, "label_cache", LabelCache(16))
    monkeypatch.setattr(engine, "label_sets", LabelCache(4))
    calls = []
    monkeypatch.setattr(engine, "on_cache_lookup", lambda hits, misses: calls.append((hits, misses)))
    assert engine.cached_label_embeddings(["cat", "dog"]) is None  # nothing cached: the model thread's job
    computed = engine.label_embeddings(["cat", "dog"])
    assert engine.cached_label_embeddings(["cat"]) is not None
    assert engine.cached_label_embeddings(["cat", "cow"]) is None  # one miss is a miss
    torch.testing.assert_close(engine.cached_label_embeddings(["dog", "cat"]), computed.flip(0))
    assert calls == [(0, 2), (1, 0), (2, 0)]  # misses are counted where they are computed
    # a repeated set is the same tensor (no stacking per request; run_batch shares its columns)
    assert engine.cached_label_embeddings(["dog", "cat"]) is engine.cached_label_embeddings(["dog", "cat"])
    assert engine.cached_label_embeddings(["dog", "cat"], ["a drawing of a {}."]) is None  # templates are in the key
