"""Bulk classification: a whole collection (files, directories, globs, .tar archives) against one
label set, written as it goes to JSON lines or CSV (app/bulk_output.py), resumable, with the
embeddings optionally in a .npy. Locally, decoding runs on a thread pool while the model runs
batches on the calling thread; with Ray (app/bulk_ray.py) the same BatchClassifier runs in a pool
of actors. The engine, the label checks and the limits (CLIP_* settings) are the server's.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import model

from .bulk_output import (
    EmbeddingsFile,
    Record,
    ResultsFile,
    output_format,
    record_of_failure,
    record_of_success,
    refuse_to_overwrite,
)
from .bulk_sources import Source, find_sources, read_source
from .engine import ZeroShotEngine, scores, top_k
from .exceptions import InvalidInput, ServiceError, UnsupportedImage
from .inputs import check_labels_known, check_top_k, clean_labels, clean_templates
from .settings import Settings

Decoded = tuple[Source, "torch.Tensor | ServiceError"]


@dataclass(frozen=True)
class LabelSet:
    """What every image is classified against, checked as the server checks a request."""

    labels: tuple[str, ...]
    templates: tuple[str, ...] | None
    top_k: int

    @classmethod
    def checked(cls, labels: Sequence[str], templates: Sequence[str] | None, k: int, settings: Settings) -> LabelSet:
        """Cleaned labels and templates; InvalidInput for what the server would refuse. Needs only
        the checkpoint's tokenizer, so it runs before the model loads (and once, before Ray)."""
        check_top_k(k)
        labels = clean_labels(labels, settings)
        templates = clean_templates(templates, settings)
        check_labels_known(labels, model.load_tokenizer(settings.checkpoint).word_pieces)
        return cls(tuple(labels), tuple(templates) if templates else None, min(k, len(labels)))


@dataclass
class Batch:
    """Results of consecutive images: one record and one embedding row (NaN if it failed) each."""

    records: list[Record]
    embeddings: np.ndarray


class BatchClassifier:
    """One engine and one label set: Sources in, Batches out. Loads the checkpoint once."""

    def __init__(self, settings: Settings, label_set: LabelSet):
        self.engine = ZeroShotEngine(
            settings.checkpoint, settings.device, settings.dtype, settings.label_cache_size, settings.max_image_pixels
        )
        self.label_set = label_set
        self.classes = self.engine.label_embeddings(label_set.labels, label_set.templates)
        self.max_bytes = settings.max_upload_bytes
        self.dim = self.engine.config.output_dim

    def decode(self, source: Source) -> torch.Tensor:
        """One image, read and decoded under the server's limits; a ServiceError says why not."""
        data = read_source(source, self.max_bytes)
        try:
            return self.engine.decode_image(data, source.name)
        except ServiceError:
            raise
        except Exception as error:  # a decoder failing in a way load_image does not foresee must not end the run
            raise UnsupportedImage(f"{source.name!r} could not be decoded: {type(error).__name__}: {error}") from error

    def classify(self, decoded: Sequence[Decoded]) -> Batch:
        """One forward pass over the decoded images; the failed ones keep their error, in place."""
        embeddings = np.full((len(decoded), self.dim), np.nan, dtype=np.float32)
        good = [position for position, (_, result) in enumerate(decoded) if isinstance(result, torch.Tensor)]
        pixels = [result for _, result in decoded if isinstance(result, torch.Tensor)]
        records: list[Record] = [
            record_of_failure(source.name, result.code, result.message) if isinstance(result, ServiceError) else {}
            for source, result in decoded
        ]
        if good:
            image_embeddings = self.engine.encode_images(torch.stack(pixels))
            logits = self.engine.logits(image_embeddings, self.classes)
            for position, row in zip(good, scores(self.label_set.labels, logits)):
                best = [asdict(score) for score in top_k(row, self.label_set.top_k)]
                records[position] = record_of_success(decoded[position][0].name, best)
            embeddings[good] = image_embeddings.float().cpu().numpy()
        return Batch(records, embeddings)

    def classify_sources(self, sources: Sequence[Source], decode_workers: int) -> Batch:
        """Read, decode (on ``decode_workers`` threads) and classify one batch of Sources."""
        with ThreadPoolExecutor(decode_workers, thread_name_prefix="decode") as pool:
            return self.classify(list(decoded_in_order(self.decode, sources, pool, window=len(sources))))


def decoded_in_order(decode, sources: Iterable[Source], pool: ThreadPoolExecutor, window: int) -> Iterator[Decoded]:
    """Each source with its decoded pixels or its error, in order; up to ``window`` decode at once
    on ``pool`` while the caller works on what it was given (the model runs a batch meanwhile)."""
    pending: deque[tuple[Source, Future]] = deque()
    for source in sources:
        pending.append((source, pool.submit(decode, source)))
        if len(pending) >= window:
            yield _settled(*pending.popleft())
    while pending:
        yield _settled(*pending.popleft())


def _settled(source: Source, future: Future) -> Decoded:
    try:
        return source, future.result()
    except ServiceError as error:
        return source, error


def in_batches(decoded: Iterable[Decoded], size: int) -> Iterator[list[Decoded]]:
    batch: list[Decoded] = []
    for item in decoded:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def local_batches(
    classifier: BatchClassifier, sources: Sequence[Source], batch_size: int, decode_workers: int
) -> Iterator[Batch]:
    """The local pipeline: decoding two batches ahead on the thread pool, the model on this thread."""
    with ThreadPoolExecutor(decode_workers, thread_name_prefix="decode") as pool:
        decoded = decoded_in_order(classifier.decode, sources, pool, window=2 * batch_size)
        for batch in in_batches(decoded, batch_size):
            yield classifier.classify(batch)


@dataclass(frozen=True)
class Summary:
    images: int  # lines in the results file
    failed: int  # of which failed (earlier runs' included, when resuming)
    classified: int  # by this run
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class BulkJob:
    """A bulk run's inputs and outputs, checked before the model loads."""

    inputs: tuple[str, ...]
    out: Path
    label_set: LabelSet
    settings: Settings
    embeddings: Path | None = None
    resume: bool = False
    batch_size: int = 32
    decode_workers: int = 2

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.decode_workers < 1:
            raise InvalidInput("--batch-size and --decode-workers must be at least 1", "bad_option")


def run_bulk(job: BulkJob, progress: bool = True, use_ray: bool = False, ray_address: str | None = None) -> Summary:
    """Classifies every image of ``job.inputs`` not already in ``job.out`` and appends the results
    (and embedding rows). Input and output problems raise InvalidInput before any file is written."""
    sources = find_sources(job.inputs)
    format = output_format(job.out, job.label_set.top_k)
    if not job.resume:
        refuse_to_overwrite(job.out, job.embeddings)
    results = ResultsFile(job.out, format)
    embeddings = None
    try:
        if job.embeddings is not None:
            dim = model.load_config(job.settings.checkpoint).output_dim
            embeddings = EmbeddingsFile(job.embeddings, dim, results.rows)
        todo = [source for source in sources if source.name not in results.done]
        batches = _batches(job, todo, use_ray, ray_address) if todo else iter(())
        started = time.perf_counter()
        with _progress_bar(len(todo), progress) as bar:
            for batch in batches:
                if embeddings is not None:  # rows first: the .npy never holds fewer rows than there are lines
                    embeddings.append(batch.embeddings)
                results.write(batch.records)
                bar.update(len(batch.records))
        return Summary(results.rows, results.failed, len(todo), time.perf_counter() - started)
    finally:
        results.close()
        if embeddings is not None:
            embeddings.close()


def _batches(job: BulkJob, todo: Sequence[Source], use_ray: bool, ray_address: str | None) -> Iterator[Batch]:
    if use_ray:
        from .bulk_ray import ray_batches

        return ray_batches(job, todo, ray_address)
    classifier = BatchClassifier(job.settings, job.label_set)
    return local_batches(classifier, todo, job.batch_size, job.decode_workers)


def _progress_bar(total: int, wanted: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        file=sys.stderr,
        disable=not (wanted and sys.stderr.isatty()),
        dynamic_ncols=True,
        smoothing=0.05,
    )
