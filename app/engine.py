"""ZeroShotEngine: a CLIP checkpoint, its tokenizer and a label-embedding cache. Synchronous and
free of HTTP; app/service.py runs it off the event loop and app/batching.py feeds it batches.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

import model
from model.zero_shot import DEFAULT_TEMPLATES, label_embeddings

from .exceptions import ImageTooLarge, StartupError, UnsupportedImage

log = logging.getLogger("app.engine")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# stacked label sets kept; with the default limit of 64 labels a request, at most 256 x 64 x 384
# floats (25 MB in fp32) for a 384-dimensional model; none when the label cache is off
LABEL_SETS_CACHED = 256


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise StartupError("CLIP_DEVICE=cuda but no CUDA device is available: use CLIP_DEVICE=cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class LabelCache:
    """Bounded LRU of class embeddings, keyed by (templates, label) or, for whole stacked label sets,
    (templates, labels). Thread-safe: the event loop reads it (cache hits need no model thread)
    while the model thread fills it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            embedding = self._entries.get(key)
            if embedding is not None:
                self._entries.move_to_end(key)
            return embedding

    def put(self, key, embedding: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._entries[key] = embedding
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class LabelScore:
    label: str
    probability: float
    logit: float


class DeviceEvent(Protocol):
    """torch.cuda.Event, as finish_batch uses it."""

    def synchronize(self) -> None: ...


@dataclass
class StartedBatch:
    """A batch whose device work is queued (ZeroShotEngine.start_batch), for finish_batch."""

    class_keys: list[int | None]  # per image: id() of its class set, None for an embedding
    columns: dict[int, slice]  # each class set's columns of ``logits``, keyed by id()
    logits: torch.Tensor | None  # (B, all the sets' classes) on the CPU, once ``ready``
    vectors: torch.Tensor | None  # (B, D) embeddings on the CPU, once ``ready``; None if no image asks
    ready: DeviceEvent | None  # recorded after the copies to the CPU; None where they are synchronous


class ZeroShotEngine:
    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        label_cache_size: int = 4096,
        max_image_pixels: int | None = None,
        on_cache_lookup: Callable[[int, int], None] | None = None,
    ):
        self.checkpoint = model.check_checkpoint_files(checkpoint)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.clip = model.load_pretrained(self.checkpoint, device=self.device, dtype=self.dtype)
        self.tokenizer = model.load_tokenizer(self.checkpoint)
        self.config = self.clip.config
        self.sha256 = model.weights_sha256(self.checkpoint)
        self.templates = tuple(self.config.zero_shot_templates) or DEFAULT_TEMPLATES
        self.max_image_pixels = max_image_pixels
        self.label_cache = LabelCache(label_cache_size)
        # whole label sets, stacked: a request that repeats a set (the common case) costs no stacking,
        # and the requests of a batch that share a set share its columns in run_batch
        self.label_sets = LabelCache(LABEL_SETS_CACHED if label_cache_size else 0)
        self.on_cache_lookup = on_cache_lookup
        self._compiled_towers: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # batch size -> tower
        self.pads_to_compiled = False  # a batch runs at the next compiled size up (CUDA graphs), not only at its own
        log.info("loaded %s (sha256 %s) on %s as %s", self.checkpoint, self.sha256[:12], self.device, self.dtype)

    @property
    def name(self) -> str:
        return self.checkpoint.name

    def decode_image(
        self, data: bytes, filename: str = "the upload", before_decode: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Upload bytes -> (3, H, W) uint8 at the model's input size (normalised later, on the device).
        ``before_decode(width, height)`` may refuse the image before its pixels are decoded."""
        try:
            image = model.load_image(
                data,
                max_pixels=self.max_image_pixels,
                target_size=self.config.vision.image_size,
                before_decode=before_decode,
            )
        except model.ImageTooLargeError as error:
            raise ImageTooLarge(_naming(error, filename)) from error
        except model.ImageError as error:
            raise UnsupportedImage(_naming(error, filename)) from error
        return model.preprocess_images([image], self.config, normalize=False)[0]

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, D) normalised embeddings; uint8 travels to the device, normalised there,
        through a compiled tower (CLIP_COMPILE) where one was compiled for N images (or, padding, for the
        next size up), else the eager one. Compiled as CUDA graphs, the result is a view of the graph's
        output buffer, which the next call on this thread overwrites: read or copy it before then."""
        if self.device.type == "cuda" and pixels.device.type == "cpu":
            pixels = pixels.pin_memory()  # from pinned memory the copy is queued; from pageable, it waits for the GPU
        pixels = pixels.to(self.device, non_blocking=True)
        count = len(pixels)
        size = self._compiled_size(count)
        if size is None:
            return self.eager_tower(pixels)
        # the batch a graph runs, blank images after the real ones (an image's embedding does not depend on
        # its company), made here under inference mode whether padded or not: dynamo's guards tell an
        # inference tensor from a plain one, and a batch made otherwise would recompile
        batch = pixels.new_zeros(size, *pixels.shape[1:])
        batch[:count] = pixels
        # a new step for CUDA graphs: the output they write over on each replay is read before the next
        torch.compiler.cudagraph_mark_step_begin()
        return self._compiled_towers[size](batch)[:count]

    def _compiled_size(self, count: int) -> int | None:
        """The compiled batch size that runs ``count`` images; None: the eager tower does."""
        if count in self._compiled_towers:
            return count
        if self.pads_to_compiled:
            return min((size for size in self._compiled_towers if size > count), default=None)
        return None

    def eager_tower(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 on the device -> (N, D) normalised embeddings: what app/compiling.py compiles."""
        return self.clip.encode_image(model.normalize_pixels(pixels, self.config, self.dtype))

    def use_compiled(
        self, tower: Callable[[torch.Tensor], torch.Tensor], batch_sizes: Sequence[int], pad: bool = False
    ) -> None:
        """Run batches of ``batch_sizes`` images through ``tower`` (compiled for those sizes); with ``pad``,
        a batch of another size too, padded up to the smallest of them that holds it."""
        self._compiled_towers = dict.fromkeys(batch_sizes, tower)
        self.pads_to_compiled = pad

    @property
    def compiled_batch_sizes(self) -> list[int]:
        return sorted(self._compiled_towers)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return model.zero_shot.encode_texts(self.clip, self.tokenizer, texts)

    @torch.inference_mode()
    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """(C, D) class embeddings, prompt-ensembled over ``templates``; cached per (templates, label)."""
        templates = tuple(templates or self.templates)
        cached = {label: self.label_cache.get((templates, label)) for label in labels}
        missing = [label for label, embedding in cached.items() if embedding is None]
        if missing:
            for label, embedding in zip(missing, label_embeddings(self.clip, self.tokenizer, missing, templates)):
                cached[label] = embedding
                self.label_cache.put((templates, label), embedding)
        if self.on_cache_lookup is not None:
            self.on_cache_lookup(len(labels) - len(missing), len(missing))
        return torch.stack([cached[label] for label in labels])

    def cached_label_embeddings(
        self, labels: Sequence[str], templates: Sequence[str] | None = None
    ) -> torch.Tensor | None:
        """label_embeddings when every label is cached (safe off the model thread), else None.
        The same labels and templates give the same tensor object while the set stays cached."""
        templates = tuple(templates or self.templates)
        key = (templates, tuple(labels))
        stacked = self.label_sets.get(key)
        if stacked is None:
            cached = [self.label_cache.get((templates, label)) for label in labels]
            if any(embedding is None for embedding in cached):
                return None
            stacked = torch.stack(cached)
            self.label_sets.put(key, stacked)
        if self.on_cache_lookup is not None:
            self.on_cache_lookup(len(labels), 0)
        return stacked

    @torch.inference_mode()
    def logits(self, image_embeddings: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) logits_per_image in float32 on the CPU."""
        return self._device_logits(image_embeddings, class_embeddings).cpu()

    def _device_logits(self, image_embeddings: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """In float32 whatever the model's dtype: a bf16 logit near 30 would be rounded to a step of 0.125."""
        temperature = self.clip.temperature().float()
        return temperature * image_embeddings.float() @ class_embeddings.float().t()

    @torch.inference_mode()
    def start_batch(self, pixels: torch.Tensor, class_sets: Sequence[torch.Tensor | None]) -> StartedBatch:
        """The device's part of a batch, on the model thread: (B, 3, H, W) uint8 from several requests
        and, per image, its request's (C, D) class embeddings or None -> the batch's logits against
        every distinct class set in one product (or its embeddings), float32, on their way to the CPU.
        Returns without waiting for the device, so the model thread can start the next batch while
        ``finish_batch`` (another thread) waits for this one's results and splits them into rows."""
        embeddings = self.encode_images(pixels)
        distinct = list({id(classes): classes for classes in class_sets if classes is not None}.values())
        logits = vectors = None
        if distinct:
            logits = self._device_logits(embeddings, torch.cat(distinct))
            logits = logits.to("cpu", non_blocking=True)  # into pinned memory from a GPU; a no-op on the CPU
        if any(classes is None for classes in class_sets):
            vectors = embeddings.float().to("cpu", non_blocking=True)
        keys = [None if classes is None else id(classes) for classes in class_sets]
        return StartedBatch(keys, _column_ranges(distinct), logits, vectors, self.record_ready())

    def record_ready(self) -> DeviceEvent | None:
        """What finish_batch waits on for the device work queued so far on this thread (the copies to
        the CPU included): a CUDA event, or None on the CPU, where that work is already done."""
        if self.device.type != "cuda":
            return None
        ready = torch.cuda.Event(blocking=True)  # its waiter sleeps: a spinning one would take a core from decoding
        ready.record()
        return ready

    def finish_batch(self, started: StartedBatch) -> list[torch.Tensor]:
        """Per image of a started batch, once the device is done with it: its logits row (C,) against
        its own request's classes, or without classes its embedding (D,), float32 on the CPU."""
        if started.ready is not None:
            started.ready.synchronize()
        rows: dict[int | None, tuple[torch.Tensor, ...]] = {}
        if started.logits is not None:
            for key, columns in started.columns.items():
                rows[key] = started.logits[:, columns].unbind(0)
        if started.vectors is not None:
            rows[None] = started.vectors.unbind(0)
        return [rows[key][image] for image, key in enumerate(started.class_keys)]

    def run_batch(self, pixels: torch.Tensor, class_sets: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """start_batch then finish_batch on this thread: per image, its logits row or embedding."""
        return self.finish_batch(self.start_batch(pixels, class_sets))

    def warm_up(self) -> None:
        """One tiny forward of each tower, so the first request does not pay for lazy initialisation."""
        size = self.config.vision.image_size
        self.encode_images(torch.zeros(1, 3, size, size, dtype=torch.uint8))
        self.encode_texts(["warm-up"])

    def info(self) -> dict:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "checkpoint": str(self.checkpoint),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "vocab_size": self.tokenizer.vocab_size,
            "templates": list(self.templates),
            "compiled_batch_sizes": self.compiled_batch_sizes,
            "pads_to_compiled": self.pads_to_compiled,
            "config": self.config.to_dict(),
        }


def scores(labels: Sequence[str], logits: torch.Tensor) -> list[list[LabelScore]]:
    """(N, C) logits -> per image, in label order, {label, probability (softmax over labels), logit}."""
    probabilities = logits.softmax(dim=-1)
    return [
        [LabelScore(label, float(p), float(z)) for label, p, z in zip(labels, row_p, row_z)]
        for row_p, row_z in zip(probabilities.tolist(), logits.tolist())
    ]


def top_k(row: list[LabelScore], k: int) -> list[LabelScore]:
    return sorted(row, key=lambda score: score.probability, reverse=True)[:k]


def _column_ranges(class_sets: list[torch.Tensor]) -> dict[int, slice]:
    """Each class set's columns once the sets are concatenated, keyed by the set's id()."""
    ranges, start = {}, 0
    for classes in class_sets:
        ranges[id(classes)] = slice(start, start + len(classes))
        start += len(classes)
    return ranges


def _naming(error: Exception, filename: str) -> str:
    """The library calls bytes 'the upload'; say which upload."""
    return str(error).replace("the upload", repr(filename), 1)
