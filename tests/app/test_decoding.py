"""FairDecoder's order of work across requests and PixelBudget, in-process on real threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.decoding import FairDecoder, PixelBudget
from app.exceptions import RequestTooLarge


def run_requests(threads: int, requests: dict[str, list[str]], failing: set[str] = frozenset()) -> tuple[list, dict]:
    """Each request mapped on one FairDecoder; the first request's first image holds its thread until
    every request has arrived. Returns the order images were decoded in and each request's outcome."""
    order: list[str] = []
    all_arrived = threading.Event()

    def decode(image: str) -> str:
        if not order and image == next(iter(requests.values()))[0]:
            assert all_arrived.wait(10)
        order.append(image)
        if image in failing:
            raise ValueError(f"{image} is broken")
        return image.upper()

    async def scenario() -> dict:
        decoder = FairDecoder(threads)
        tasks = {}
        for name, images in requests.items():
            tasks[name] = asyncio.ensure_future(decoder.map(decode, images))
            await asyncio.sleep(0.01)  # arrives while the first image is being decoded
        all_arrived.set()
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        decoder.shutdown()
        return dict(zip(tasks, outcomes))

    outcomes = asyncio.run(scenario())
    return order, outcomes


def test_a_small_request_is_not_queued_behind_a_big_requests_images():
    order, outcomes = run_requests(1, {"big": ["b1", "b2", "b3", "b4"], "small": ["s1"]})
    assert order == ["b1", "s1", "b2", "b3", "b4"]  # FIFO would decode s1 last
    assert outcomes == {"big": ["B1", "B2", "B3", "B4"], "small": ["S1"]}


def test_requests_of_equal_progress_take_turns_image_by_image():
    order, _ = run_requests(1, {"a": ["a1", "a2", "a3"], "b": ["b1", "b2", "b3"], "c": ["c1", "c2"]})
    assert order == ["a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3"]


def test_a_failed_request_decodes_no_more_of_its_images_and_others_go_on():
    order, outcomes = run_requests(1, {"first": ["f1"], "bad": ["x1", "x2", "x3"], "good": ["g1", "g2"]}, {"x1"})
    assert order == ["f1", "x1", "g1", "g2"]  # x2 and x3 never decoded
    assert isinstance(outcomes["bad"], ValueError) and outcomes["good"] == ["G1", "G2"]


def test_pixel_budget_both_sides_of_the_limit():
    budget = PixelBudget(15_000)
    budget.take(100, 100)
    budget.take(1, 5_000)  # exactly at the limit
    with pytest.raises(RequestTooLarge, match="more than 15000 pixels in all.*CLIP_MAX_REQUEST_PIXELS"):
        budget.take(1, 1)
    assert budget.used == 15_000
