"""CLIP_COMPILE (app/compiling.py): the compiled tower equals the eager one and runs for its batch
sizes only; a server compiles before /readyz says ready and never while serving; where inductor
cannot build (no C++ compiler) `auto` serves eager with a warning and `on` stops the server; `off`
never compiles. torch's own witnesses: the profiler's "Torch-Compiled Region" events, and dynamo's
"torchdynamo start tracing" log lines (TORCH_LOGS=dynamo)."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
import torch

from app.compiling import (
    MIN_SPEED_UP,
    CompilePlan,
    bucket_sizes,
    compile_plan,
    faster_sizes,
    kept_sizes,
    prepare_tower,
)
from app.engine import ZeroShotEngine

from .server import AUTH, Server, classify, image_bytes
from .test_classify import reference_logits

# a compiler inductor cannot run: a real build failure, not a stand-in for torch.compile
NO_COMPILER = {"CXX": "/nonexistent/g++"}
DYNAMO_LOG = {"TORCH_LOGS": "dynamo"}
TRACING = "torchdynamo start tracing eager_tower"
COLOURS = ((200, 30, 30), (30, 90, 200), (250, 250, 0), (9, 9, 9))
LABELS = ["cat", "dog", "pizza"]


@pytest.fixture(scope="module")
def servers(tiny_checkpoint, tmp_path_factory):
    """Started together (each pays for importing torch): compile on, auto and on without a compiler
    (each with an empty inductor cache, so no kernel built earlier can stand in), and off."""
    cache = {name: str(tmp_path_factory.mktemp(f"inductor-{name}")) for name in ("auto", "on")}
    launched = {
        "on": Server(tiny_checkpoint, compile="on", max_batch=2, environment=DYNAMO_LOG),
        "auto without a compiler": Server(
            tiny_checkpoint, compile="auto", environment={**NO_COMPILER, "TORCHINDUCTOR_CACHE_DIR": cache["auto"]}
        ),
        "on without a compiler": Server(
            tiny_checkpoint, compile="on", environment={**NO_COMPILER, "TORCHINDUCTOR_CACHE_DIR": cache["on"]}
        ),
        "off": Server(tiny_checkpoint, compile="off", environment=DYNAMO_LOG),
    }
    yield launched
    for server in launched.values():
        server.finish()


@pytest.fixture(scope="module")
def compiled_engine(tiny_checkpoint):
    engine = ZeroShotEngine(tiny_checkpoint, device="cpu")
    prepare_tower(engine, "on", max_batch=2)  # batch sizes 1 and 2: two compiles, not three
    yield engine
    torch._dynamo.reset()


def random_pixels(size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)


def ran_compiled(engine: ZeroShotEngine, pixels: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The engine's embeddings, and whether a compiled graph computed them (torch's profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        embeddings = engine.encode_images(pixels)
    return embeddings, any(event.name.startswith("Torch-Compiled Region") for event in profile.events())


def test_the_compiled_tower_equals_the_eager_one_within_1e_5(compiled_engine):
    assert compiled_engine.compiled_batch_sizes == [1, 2]
    for size in (1, 2, 3):
        pixels = random_pixels(size, seed=size)
        embeddings, compiled = ran_compiled(compiled_engine, pixels)
        assert compiled == (size in (1, 2)), f"batch {size}: compiled {compiled}"
        with torch.inference_mode():
            eager = compiled_engine.eager_tower(pixels)
        assert embeddings.dtype == torch.float32 and embeddings.shape == eager.shape
        assert (embeddings - eager).abs().max().item() <= 1e-5, size


def test_a_cpu_compiles_small_exact_sizes_up_to_the_largest_batch():
    cpu = torch.device("cpu")
    plans = [compile_plan(cpu, max_batch) for max_batch in (1, 2, 3, 4, 32)]
    assert [plan.batch_sizes for plan in plans] == [[1], [1, 2], [1, 2], [1, 2, 4], [1, 2, 4]]
    assert not any(plan.pad for plan in plans) and all(plan.options == {} for plan in plans)


def test_cuda_compiles_cuda_graphs_for_powers_of_two_and_the_largest_batch():
    plan = compile_plan(torch.device("cuda"), 32)
    assert plan == CompilePlan([1, 2, 4, 8, 16, 32], {"mode": "reduce-overhead"}, pad=True)
    # the largest batch closes the list whether or not it is a power of two
    assert [bucket_sizes(max_batch) for max_batch in (1, 2, 3, 24, 33)] == [
        [1],
        [1, 2],
        [1, 2, 3],
        [1, 2, 4, 8, 16, 24],
        [1, 2, 4, 8, 16, 32, 33],
    ]


def test_padded_batches_run_compiled_at_the_next_size_up_and_equal_eager(tiny_checkpoint):
    """CUDA's plan (padding to the next compiled size) on the CPU, with a dynamo backend that runs the
    captured graph as it is and notes its batch size: the path, not the speed (CUDA graphs need a GPU: tests/app/test_cuda.py runs them there). Dynamo
    refusing to recompile is the witness that every batch ran one of the graphs made at start-up."""
    ran_at: list[int] = []  # the batch size each run of a compiled graph was given

    def recording_backend(graph: torch.fx.GraphModule, example_inputs):
        def run(*inputs):
            [pixels] = [tensor for tensor in inputs if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8]
            ran_at.append(len(pixels))
            return graph(*inputs)

        return run

    engine = ZeroShotEngine(tiny_checkpoint, device="cpu")
    prepare_tower(engine, "on", max_batch=5, plan=CompilePlan([2, 4], {"backend": recording_backend}, pad=True))
    assert engine.compiled_batch_sizes == [2, 4] and engine.pads_to_compiled
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            for size, next_size_up in ((1, 2), (2, 2), (3, 4), (4, 4)):
                pixels = random_pixels(size, seed=20 + size)
                ran_at.clear()
                embeddings, compiled = ran_compiled(engine, pixels)
                assert compiled and ran_at == [next_size_up], f"batch {size} ran at {ran_at}"
                with torch.inference_mode():
                    eager = engine.eager_tower(pixels)
                assert embeddings.shape == eager.shape, size
                assert (embeddings - eager).abs().max().item() <= 1e-5, size
            # beyond the largest compiled size: eager (the batcher never makes one)
            assert not ran_compiled(engine, random_pixels(5, seed=25))[1]
    finally:
        torch._dynamo.reset()


def test_auto_keeps_a_size_only_when_compiled_is_faster_by_the_margin():
    assert MIN_SPEED_UP == 1.05
    timings = {1: (22.3, 14.5), 2: (21.0, 20.0), 4: (20.99, 20.0), 8: (78.0, 78.0), 16: (10.0, 12.0)}
    assert faster_sizes(timings) == [1, 2]


def test_auto_with_padding_keeps_every_size_or_none():
    all_faster = {1: (3.9, 0.7), 2: (3.9, 0.8), 4: (4.0, 0.9)}
    assert kept_sizes(all_faster, pad=True) == [1, 2, 4]
    one_tie = {**all_faster, 2: (3.9, 3.8)}  # batches of 2 would otherwise run the graph for 4, never timed
    assert kept_sizes(one_tie, pad=True) == []
    assert kept_sizes(one_tie, pad=False) == [1, 4]  # exact sizes only: each stands on its own timing


def test_auto_measures_each_size_and_says_what_it_chose(tiny_checkpoint, caplog):
    engine = ZeroShotEngine(tiny_checkpoint, device="cpu")
    with caplog.at_level(logging.INFO, logger="app.compiling"):
        prepare_tower(engine, "auto", max_batch=1)
    [choice] = [record.getMessage() for record in caplog.records if "CLIP_COMPILE=auto" in record.getMessage()]
    timed = re.findall(r"batch (\d+) [\d.]+ / [\d.]+", choice)
    assert timed == ["1"], choice
    assert engine.compiled_batch_sizes in ([], [1])
    _, compiled = ran_compiled(engine, random_pixels(1, seed=11))
    assert compiled == (engine.compiled_batch_sizes == [1])


def ready_line(log: str) -> int:
    lines = log.splitlines()
    return next(index for index, line in enumerate(lines) if "ready in" in line and "app.service" in line)


def test_a_server_compiles_before_it_is_ready_and_never_while_serving(servers, tiny_checkpoint):
    server = servers["on"]
    server.wait_ready()
    info = httpx.get(f"{server.url}/v1/model", headers=AUTH, timeout=30).json()
    assert info["compiled_batch_sizes"] == [1, 2]
    images = [image_bytes(colour) for colour in COLOURS]
    for count in (1, 2, 3):  # batches of 1, 2, and 2 + 1
        response = classify(server.url, [(f"{n}.png", data) for n, data in enumerate(images[:count])], LABELS)
        assert response.status_code == 200, response.text
        logits = torch.tensor([[s["logit"] for s in result["scores"]] for result in response.json()["results"]])
        expected = reference_logits(tiny_checkpoint, images[:count], LABELS, response.json()["templates"])
        assert torch.allclose(logits, expected, atol=1e-4), count
    log = server.finish()
    lines = log.splitlines()
    ready = ready_line(log)
    traced = [index for index, line in enumerate(lines) if TRACING in line]
    assert traced, "dynamo never traced the tower:\n" + log[-3000:]
    assert max(traced) < ready, "the tower was traced after the server said it was ready:\n" + log[-3000:]


def test_auto_serves_eager_with_a_warning_where_it_cannot_compile(servers, tiny_checkpoint):
    server = servers["auto without a compiler"]
    server.wait_ready()
    info = httpx.get(f"{server.url}/v1/model", headers=AUTH, timeout=30).json()
    assert info["compiled_batch_sizes"] == []
    response = classify(server.url, [("red.png", image_bytes())], LABELS)
    assert response.status_code == 200, response.text
    log = server.finish()
    [warning] = [line for line in log.splitlines() if "WARNING" in line and "CLIP_COMPILE=auto" in line]
    assert "compiling the image tower failed" in warning and "serving the eager tower" in warning, warning


def test_on_stops_the_server_where_it_cannot_compile_and_says_what_to_do(servers):
    server = servers["on without a compiler"]
    returncode = server.wait_exit()
    log = server.finish()
    assert returncode != 0, log[-3000:]
    assert "CLIP_COMPILE=on but the image tower could not be compiled" in log, log[-3000:]
    assert "C++ compiler" in log and "CLIP_COMPILE=auto" in log, log[-3000:]


def test_off_never_compiles(servers):
    server = servers["off"]
    server.wait_ready()
    assert httpx.get(f"{server.url}/v1/model", headers=AUTH, timeout=30).json()["compiled_batch_sizes"] == []
    images = [image_bytes(colour) for colour in COLOURS[:2]]
    for count in (1, 2):
        response = classify(server.url, [(f"{n}.png", data) for n, data in enumerate(images[:count])], LABELS)
        assert response.status_code == 200, response.text
    log = server.finish()
    ready_line(log)  # the server did come up and log it
    assert TRACING not in log, log[-3000:]
