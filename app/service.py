"""ZeroShotService: the engine run off the event loop. Loads the model in the background,
decodes uploads in a thread pool, runs every model call on one model thread, and batches
images across requests. The routes call ``classify`` / ``embed_*`` and shape nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import torch

from . import metrics
from .batching import DynamicBatcher
from .compiling import prepare_tower
from .decoding import FairDecoder, PixelBudget
from .engine import ZeroShotEngine, scores
from .engine import top_k as take_top_k
from .exceptions import NotReady, ShuttingDown
from .inputs import check_image_count, check_labels_known, check_top_k, clean_labels, clean_templates, clean_texts
from .settings import Settings
from .workers import available_cores, threads_per_worker

log = logging.getLogger("app.service")

Upload = tuple[str, bytes]  # (filename, bytes)


class ZeroShotService:
    def __init__(
        self,
        settings: Settings,
        on_failure: Callable[[], None] | None = None,
        on_ready: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.on_failure = on_failure  # called once the background load has failed (the server stops itself)
        self.on_ready = on_ready  # called once the model is loaded and warm (a worker tells its siblings)
        self.engine: ZeroShotEngine | None = None
        self.batcher: DynamicBatcher | None = None
        self.state = "starting"
        self.failure: str | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        # waits for each batch's results and splits them per image while the model thread starts the next
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="finish")
        self._decoders = FairDecoder(settings.decode_threads)
        self._decoding = 0  # images of requests still decoding: the batches they will join wait for them
        self._loading: asyncio.Task | None = None

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load and warm up in the background; /readyz says 503 until it is done."""
        self._share_the_cores()
        self.state = "loading"
        self._loading = asyncio.create_task(self._load(), name="load-model")

    def _share_the_cores(self) -> None:
        """CLIP_WORKERS processes split the cores this container may use. Set before the model and
        decode threads start: PyTorch's thread count is per thread, and a new one takes the last set."""
        cores = available_cores()
        threads = threads_per_worker(self.settings.workers, cores)
        torch.set_num_threads(threads)
        log.info("%d PyTorch thread(s): %d core(s) available, %d worker(s)", threads, cores, self.settings.workers)

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            self.engine = await self._on_model_thread(self._build_engine)
        except Exception as error:
            self.state, self.failure = "failed", str(error)
            log.error("model failed to load: %s", error)
            if self.on_failure is not None:
                self.on_failure()
            return
        self.batcher = batcher = DynamicBatcher(
            self.engine.start_batch,
            self._model_thread,
            max_batch=self.settings.max_batch,
            max_wait=self.settings.batch_wait_ms / 1000,
            max_queue=self.settings.max_queue,
            on_batch=metrics.observe_batch,
            on_queue=metrics.QUEUED.set,
            incoming=(lambda: self._decoding) if self.settings.batch_gather == "incoming" else None,
            in_flight=self.settings.batches_in_flight,
            finish_batch=self.engine.finish_batch,
            finisher=self._finisher,
        )
        batcher.start()
        self.state = "ready"
        if self.on_ready is not None:
            self.on_ready()
        log.info("ready in %.1f s", time.perf_counter() - started)

    async def wait_loaded(self) -> ZeroShotEngine:
        """The engine once loading has finished (NotReady if it failed)."""
        if self._loading is not None:
            await self._loading
        return self.ready_engine()

    def _build_engine(self) -> ZeroShotEngine:
        s = self.settings
        engine = ZeroShotEngine(
            s.checkpoint,
            s.device,
            s.dtype,
            s.label_cache_size,
            s.max_image_pixels,
            on_cache_lookup=metrics.observe_cache,
        )
        prepare_tower(engine, s.compile, s.max_batch)  # before the server is ready: no request compiles
        engine.warm_up()
        return engine

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.batcher is not None:
            self.state = "stopping"
            await self.batcher.close()
        self._model_thread.shutdown(wait=True)
        self._finisher.shutdown(wait=True)
        self._decoders.shutdown()

    def ready_engine(self) -> ZeroShotEngine:
        if self.state == "stopping":
            raise ShuttingDown()
        if self.state != "ready":
            message = {
                "loading": "the model is still loading; retry shortly",
                "failed": f"the model failed to load: {self.failure}",
            }.get(self.state, "the server is starting")
            raise NotReady(message)
        assert self.engine is not None  # "ready" is set only once the engine is built
        return self.engine

    def _running_batcher(self) -> DynamicBatcher:
        assert self.batcher is not None, "callers check ready_engine() first"
        return self.batcher

    # --- work -------------------------------------------------------------------------------
    async def classify(
        self, uploads: Sequence[Upload], labels: Sequence[str], templates: Sequence[str] | None, top_k: int
    ) -> dict:
        started = time.perf_counter()
        engine = self.ready_engine()
        check_image_count(len(uploads), self.settings)
        labels = clean_labels(labels, self.settings)
        templates = clean_templates(templates, self.settings)
        check_top_k(top_k)
        logits = await self.classify_pixels(await self._decode(uploads), labels, templates)
        metrics.IMAGES.inc(len(uploads))
        k = min(top_k, len(labels))
        results = [
            {"filename": name, "scores": [asdict(s) for s in row], "top_k": [asdict(s) for s in take_top_k(row, k)]}
            for (name, _), row in zip(uploads, scores(labels, logits))
        ]
        return {
            "results": results,
            "model": self.model_ref(),
            "templates": list(templates or engine.templates),
            "time_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    async def classify_pixels(
        self, pixels: list[torch.Tensor], labels: Sequence[str], templates: Sequence[str] | None
    ) -> torch.Tensor:
        """Decoded images (uint8 at the input size) -> (N, C) logits, float32 on the CPU. The labels'
        embeddings come from the cache when they are all there (no model-thread trip), and the logits
        are computed with the batch (DynamicBatcher, ZeroShotEngine.start_batch and finish_batch)."""
        engine = self.ready_engine()
        classes = engine.cached_label_embeddings(labels, templates)
        if classes is None:  # cached labels passed this check when they were first embedded
            check_labels_known(labels, engine.tokenizer.word_pieces)
            classes = await self._on_model_thread(engine.label_embeddings, labels, templates)
        return torch.stack(await self._running_batcher().submit(pixels, classes))

    async def embed_images(self, uploads: Sequence[Upload]) -> dict:
        self.ready_engine()
        check_image_count(len(uploads), self.settings)
        embeddings = await self._running_batcher().submit(await self._decode(uploads))
        return {
            "filenames": [name for name, _ in uploads],
            "embeddings": [e.tolist() for e in embeddings],
            "model": self.model_ref(),
        }

    async def embed_texts(self, texts: Sequence[str], template: str | None) -> dict:
        engine = self.ready_engine()
        texts = clean_texts(texts, self.settings)
        if template is not None:
            clean_templates([template], self.settings)
            texts = [template.replace("{}", text) for text in texts]
        embeddings = await self._on_model_thread(engine.encode_texts, texts)
        return {"texts": texts, "embeddings": embeddings.float().cpu().tolist(), "model": self.model_ref()}

    def model_ref(self) -> dict:
        engine = self.ready_engine()
        return {"name": engine.name, "sha256": engine.sha256[:12]}

    async def _decode(self, uploads: Sequence[Upload]) -> list[torch.Tensor]:
        """Each upload decoded on the decode threads, fairly among requests (FairDecoder), the request's
        pixels in all within CLIP_MAX_REQUEST_PIXELS."""
        engine = self.ready_engine()
        budget = PixelBudget(self.settings.max_request_pixels)

        def decode(numbered: tuple[int, Upload]) -> torch.Tensor:
            position, (name, data) = numbered
            return engine.decode_image(data, name or f"image {position}", budget.take)

        self._decoding += len(uploads)
        try:
            return await self._decoders.map(decode, list(enumerate(uploads, start=1)))
        finally:
            self._decoding -= len(uploads)

    async def _on_model_thread(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, function, *args)
