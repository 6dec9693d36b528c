"""The engine and batcher in-process: logits independent of company, the label cache, the batcher."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from app.engine import LabelCache, ZeroShotEngine
from app.exceptions import Overloaded, ShuttingDown

from .batcher import run_in_virtual_time, running_batcher
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
    assert engine.label_cache.get((engine.templates, "dog")) is None
    engine.label_embeddings(["cat", "dog"])
    assert calls == [(0, 2), (2, 0), (0, 1), (1, 1)]
    assert len(engine.label_cache) == 2
    engine.label_embeddings(["cat"], ["a drawing of a {}."])  # another template set is another key
    assert calls[-1] == (0, 1)


def test_label_cache_evicts_the_least_recently_used_key_not_the_oldest():
    cache = LabelCache(2)
    cache.put("a", torch.tensor(1.0))
    cache.put("b", torch.tensor(2.0))
    assert cache.get("a") == 1.0  # "a", put first, is now the most recently used
    cache.put("c", torch.tensor(3.0))
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c"), len(cache)) == (1.0, 3.0, 2)


def different_images(engine, count: int = 3) -> list[torch.Tensor]:
    colours = ((200, 0, 0), (0, 90, 200), (250, 250, 0), (9, 9, 9))[:count]
    return [engine.decode_image(image_bytes(colour)) for colour in colours]


def assert_each_its_own(engine, images, results, classes=None):
    """Each result is its own image's, computed alone (so a batch that permutes them fails)."""
    alone = [engine.run_batch(image[None], [classes])[0] for image in images]
    for own, other in zip(alone, alone[1:]):
        assert (own - other).abs().max() > 1e-3  # the images' results differ: a swap is visible
    for result, expected in zip(results, alone):
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)


def test_batcher_closes_on_size_and_refuses_beyond_the_queue(engine):
    sizes: list[int] = []
    images = different_images(engine)

    async def scenario():
        async with running_batcher(engine.run_batch, sizes, max_batch=3, max_wait=30, max_queue=5) as batcher:
            first = asyncio.gather(*(batcher.submit([image]) for image in images))
            results = await asyncio.wait_for(first, 10)  # closed on size, not after 30 s
            waiting = asyncio.ensure_future(batcher.submit(images[:2]))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await batcher.submit(images[:1] * 4)
        return results, await waiting  # closing ran what was queued before stopping

    results, drained = asyncio.run(scenario())
    assert sizes == [3, 2]
    assert_each_its_own(engine, images, [result[0] for result in results])
    assert_each_its_own(engine, images[:2], drained)


def test_one_request_s_different_images_each_get_their_own_logits(engine):
    sizes: list[int] = []
    images = different_images(engine)
    classes = engine.label_embeddings(["cat", "dog", "a red rocket"])

    async def scenario():
        async with running_batcher(engine.run_batch, sizes, max_batch=3, max_wait=30, max_queue=3) as batcher:
            return await asyncio.wait_for(batcher.submit(images, classes), 10)

    results = asyncio.run(scenario())
    assert sizes == [3]
    assert_each_its_own(engine, images, results, classes)


def test_a_batch_closes_max_wait_after_its_first_image_on_the_batchers_clock(engine):
    """In virtual time (the loop's clock, injected into the batcher): a lone image's batch runs
    max_wait (30 s) after it arrived, no later; an image arriving 15 s into the next wait joins
    that batch, which still closes 30 s after its first image."""
    sizes: list[int] = []
    waits: list[list[float]] = []
    image = engine.decode_image(image_bytes())

    async def scenario(loop):
        options = dict(max_batch=4, max_wait=30.0, max_queue=8, clock=loop.time)
        async with running_batcher(engine.run_batch, sizes, waits, **options) as batcher:
            await batcher.submit([image])
            first = asyncio.ensure_future(batcher.submit([image]))
            await asyncio.sleep(15.0)
            await asyncio.gather(first, batcher.submit([image]))
        return loop.time()

    finished_at = run_in_virtual_time(scenario)
    assert sizes == [1, 2]
    assert waits == [[30.0], [30.0, 15.0]]  # queue waits on the virtual clock, exact
    assert finished_at == 60.0


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


def test_a_cancelled_request_leaves_the_queue_at_once_and_no_batch_waits_for_it(engine):
    """In virtual time: a client that leaves while its 2 images wait for company (a batch closes
    at 4 images, or 30 s after its first) takes them out of the queue at once. The image that
    arrived 10 s after them then waits its own 30 s, not what was left of the cancelled
    request's; a request of 4 after it runs at once."""
    sizes: list[int] = []
    waits: list[list[float]] = []
    images = different_images(engine, 4)

    async def scenario(loop):
        options = dict(max_batch=4, max_wait=30.0, max_queue=4, clock=loop.time)
        async with running_batcher(engine.run_batch, sizes, waits, **options) as batcher:
            leaving = asyncio.ensure_future(batcher.submit(images[:2]))
            await asyncio.sleep(10.0)
            staying = asyncio.ensure_future(batcher.submit(images[2:3]))
            await asyncio.sleep(0)
            assert batcher.queued == 3
            leaving.cancel()
            await asyncio.wait([leaving])
            queued_after_leaving = batcher.queued
            alone = await staying
            full = await batcher.submit(images)
            return queued_after_leaving, alone, full, loop.time()

    queued_after_leaving, alone, full, finished_at = run_in_virtual_time(scenario)
    assert queued_after_leaving == 1
    assert sizes == [1, 4] and waits == [[30.0], [0.0] * 4]
    assert finished_at == 40.0
    assert_each_its_own(engine, images[2:3] + images[:1], alone + full[:1])
    assert_each_its_own(engine, images, full)


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


def test_with_nothing_on_its_way_a_lone_image_runs_at_once_and_otherwise_waits_for_it(engine):
    """Given how many images are still decoding upstream (``incoming``), the batcher waits only
    while some are on their way: a lone request starts at once (no added latency at low load); one
    expected image is waited for, and the batch runs as soon as it arrives, before max_wait."""
    sizes: list[int] = []
    waits: list[list[float]] = []
    image = engine.decode_image(image_bytes())
    on_their_way = [0]

    async def scenario(loop):
        options = dict(max_batch=4, max_wait=30.0, max_queue=8, clock=loop.time, incoming=lambda: on_their_way[0])
        async with running_batcher(engine.run_batch, sizes, waits, **options) as batcher:
            await batcher.submit([image])
            alone_at = loop.time()
            on_their_way[0] = 1
            first = asyncio.ensure_future(batcher.submit([image]))
            await asyncio.sleep(10.0)
            on_their_way[0] = 0
            await asyncio.gather(first, batcher.submit([image]))
        return alone_at, loop.time()

    alone_at, finished_at = run_in_virtual_time(scenario)
    assert sizes == [1, 2]
    assert alone_at == 0.0 and waits[0] == [0.0]
    assert waits[1] == [10.0, 0.0] and finished_at == 10.0


async def until(condition, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_full_batches_queue_behind_a_running_one_up_to_in_flight_and_a_partial_one_keeps_gathering(engine, in_flight):
    """The model thread held inside a batch (a gate in front of the real run_batch): a second full
    batch is handed over behind it only when in_flight allows two, never a third; a partial batch
    is not handed over at all while the thread is busy, and takes the image that fills it."""
    gate = threading.Event()
    started: list[int] = []  # batch sizes as the model thread starts them

    def gated_run_batch(pixels, contexts):
        started.append(len(pixels))
        gate.wait(30)
        return engine.run_batch(pixels, contexts)

    handed_over: list[int] = []  # batch sizes as the batcher hands them to the model thread
    images = different_images(engine, 4)

    async def scenario():
        options = dict(max_batch=2, max_wait=0.0, max_queue=8, in_flight=in_flight)
        async with running_batcher(gated_run_batch, handed_over, **options) as batcher:
            running = asyncio.ensure_future(batcher.submit(images[:2]))
            await until(lambda: started == [2])
            partial = asyncio.ensure_future(batcher.submit(images[2:3]))
            await asyncio.sleep(0.1)
            partial_handed_over = len(handed_over) > 1
            filling = asyncio.ensure_future(batcher.submit(images[3:4]))
            third = asyncio.ensure_future(batcher.submit(images[:2]))
            await asyncio.sleep(0.1)
            before_release = list(handed_over)
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(running, partial, filling, third), 30)
        return partial_handed_over, before_release, results

    partial_handed_over, before_release, (first, partial, filling, third) = asyncio.run(scenario())
    assert not partial_handed_over
    assert before_release == [2] * in_flight  # the second (now full) batch behind the first, and no third
    assert handed_over == [2, 2, 2]  # the image that arrived later joined the partial batch
    assert_each_its_own(engine, images, first + partial + filling)
    assert_each_its_own(engine, images[:2], third)


def test_a_batch_that_cannot_be_handed_over_or_comes_back_short_fails_its_requests_and_the_batcher_goes_on(engine):
    """Images that cannot be stacked (two sizes in one batch), and a run_batch that returns one result
    too few: those requests get the error; a request after each is served; an empty one returns [].
    (Batches close at 2 images, or after 30 s: every batch here is full.)"""
    sizes: list[int] = []
    images = different_images(engine, 2)
    smaller = images[0][:, :16, :16].contiguous()
    short_by_one = {"on": False}

    def run_batch(pixels, contexts):
        results = engine.run_batch(pixels, contexts)
        return results[:-1] if short_by_one["on"] else results

    def within_10_s(*submissions):  # a request left waiting forever fails the test, not hangs it
        return asyncio.wait_for(asyncio.gather(*submissions, return_exceptions=True), 10)

    async def scenario():
        async with running_batcher(run_batch, sizes, max_batch=2, max_wait=30, max_queue=4) as batcher:
            mismatched = await within_10_s(batcher.submit(images[:1]), batcher.submit([smaller]))
            [after_mismatch] = await within_10_s(batcher.submit(images))
            short_by_one["on"] = True
            [short] = await within_10_s(batcher.submit(images))
            short_by_one["on"] = False
            [after_short] = await within_10_s(batcher.submit(images))
            [empty] = await within_10_s(batcher.submit([]))
            return mismatched, after_mismatch, short, after_short, empty

    mismatched, after_mismatch, short, after_short, empty = asyncio.run(scenario())
    assert all(isinstance(error, RuntimeError) for error in mismatched), mismatched
    assert isinstance(short, RuntimeError) and "returned 1 results for a batch of 2 images" in str(short)
    assert_each_its_own(engine, images, after_mismatch)
    assert_each_its_own(engine, images, after_short)
    assert empty == []


@pytest.mark.parametrize("in_flight", [1, 2])
def test_the_model_thread_takes_the_next_batch_while_the_last_is_finished_and_in_flight_counts_until_then(
    engine, in_flight
):
    """The service's split (start_batch on the model thread, finish_batch on the finisher), the
    finisher held inside the first batch: the model thread has already started the second batch
    when in_flight allows two, and a batch counts as in flight until it is finished, so a third is
    not handed over (and with in_flight 1, not even the second). Each image of size-1 batches."""
    gate = threading.Event()
    started: list[int] = []  # batch sizes as the model thread starts them

    def start_batch(pixels, contexts):
        started.append(len(pixels))
        return engine.start_batch(pixels, contexts)

    def gated_finish_batch(batch):
        gate.wait(30)
        return engine.finish_batch(batch)

    handed_over: list[int] = []
    images = different_images(engine, 3)
    classes = engine.label_embeddings(["cat", "dog"])

    async def scenario():
        options = dict(max_batch=1, max_wait=0.0, max_queue=8, in_flight=in_flight, finish_batch=gated_finish_batch)
        async with running_batcher(start_batch, handed_over, **options) as batcher:
            requests = [asyncio.ensure_future(batcher.submit([image], classes)) for image in images]
            try:
                await until(lambda: len(started) == in_flight)
                await asyncio.sleep(0.1)  # time for a wrong third hand-over or start to show
                while_held = list(handed_over), list(started)
            finally:
                gate.set()
            results = await asyncio.wait_for(asyncio.gather(*requests), 30)
        return while_held, results

    (handed_over_while_held, started_while_held), results = asyncio.run(scenario())
    assert handed_over_while_held == [1] * in_flight
    assert started_while_held == [1] * in_flight
    assert handed_over == [1, 1, 1]
    assert_each_its_own(engine, images, [rows[0] for rows in results], classes)


def test_finish_batch_waits_for_the_device_before_it_reads_the_results(engine, monkeypatch):
    """On CUDA the copies to the CPU are only queued by start_batch, and finish_batch must wait on
    the event recorded after them (record_ready) before it reads a row. A stand-in event counts
    the waits; the rows are those run_batch computes."""

    class CountingEvent:
        waits = 0

        def synchronize(self) -> None:
            CountingEvent.waits += 1

    images = torch.stack(different_images(engine, 2))
    classes = engine.label_embeddings(["cat", "dog"])
    expected = engine.run_batch(images, [classes, None])
    monkeypatch.setattr(engine, "record_ready", CountingEvent)
    started = engine.start_batch(images, [classes, None])
    assert CountingEvent.waits == 0
    rows = engine.finish_batch(started)
    assert CountingEvent.waits == 1
    for row, reference in zip(rows, expected):
        torch.testing.assert_close(row, reference, rtol=0, atol=0)


def test_a_batch_whose_finish_fails_fails_its_requests_and_the_batcher_goes_on(engine):
    """finish_batch raising (on the finisher) fails that batch's requests only, with its error; the
    next batch is served, and it counts as finished: nothing waits for a turn forever."""
    images = different_images(engine, 2)
    classes = engine.label_embeddings(["cat", "dog"])
    failing = {"on": True}

    def finish_batch(batch):
        if failing["on"]:
            raise RuntimeError("the device went away")
        return engine.finish_batch(batch)

    async def scenario():
        options = dict(max_batch=2, max_wait=30, max_queue=4, in_flight=1, finish_batch=finish_batch)
        async with running_batcher(engine.start_batch, [], **options) as batcher:
            failed = await asyncio.wait_for(asyncio.gather(batcher.submit(images, classes), return_exceptions=True), 10)
            failing["on"] = False
            served = await asyncio.wait_for(batcher.submit(images, classes), 10)
        return failed[0], served

    failed, served = asyncio.run(asyncio.wait_for(scenario(), 20))  # a batch never finished fails, not hangs
    assert isinstance(failed, RuntimeError) and str(failed) == "the device went away"
    assert_each_its_own(engine, images, served, classes)
