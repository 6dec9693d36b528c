"""The Ray Data path of a bulk run (``clip-classify ... --out F --ray [ADDRESS]``).

The images to do become a Ray dataset (one row per image: where to read it, not its bytes), and a
pool of actors classifies it with ``map_batches``: each actor builds one BatchClassifier (the
checkpoint loaded once per actor), reads and decodes its batch on its own threads and runs the
model, on a GPU when the cluster has GPUs. The results come back to the driver in input order
(``preserve_order``) and are written by the same code as the local path.

Every node must have this project installed and see the input paths (a shared filesystem).
``ray`` is an optional dependency: ``pip install ".[ray]"``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np

from .bulk import Batch, BatchClassifier, BulkJob, LabelSet
from .bulk_sources import Source
from .exceptions import ServiceError, StartupError
from .settings import Settings

NO_OFFSET = -1  # Arrow columns hold no None for an int: a file (not an archive member) has offset -1


class RayClassifier:
    """The actor's callable class: one BatchClassifier for the actor's life."""

    def __init__(self, settings: Settings, label_set: LabelSet, decode_workers: int):
        self.classifier = BatchClassifier(settings, label_set)
        self.decode_workers = decode_workers

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.classifier.classify_sources(sources_of(rows), self.decode_workers)
        records = [json.dumps(record, ensure_ascii=False) for record in batch.records]
        return {"record": np.array(records, dtype=object), "embedding": batch.embeddings}


def row_of(source: Source) -> dict:
    return {
        "name": source.name,
        "path": source.path,
        "offset": NO_OFFSET if source.offset is None else source.offset,
        "size": NO_OFFSET if source.size is None else source.size,
        "error": source.error or "",
    }


def sources_of(rows: dict[str, np.ndarray]) -> list[Source]:
    return [
        Source(
            str(name),
            str(path),
            None if offset == NO_OFFSET else int(offset),
            None if size == NO_OFFSET else int(size),
            str(error) or None,
        )
        for name, path, offset, size, error in zip(
            rows["name"], rows["path"], rows["offset"], rows["size"], rows["error"]
        )
    ]


def ray_batches(job: BulkJob, todo: Sequence[Source], address: str | None) -> Iterator[Batch]:
    """Batches of results in input order, classified on the Ray cluster at ``address`` (None: the
    RAY_ADDRESS environment variable, else a Ray instance started here); an instance that is
    already initialised in this process is used as it is."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # row i of the output is image i of the input
        context.enable_progress_bars = False  # clip-classify shows its own
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a log line per dataset run
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        # one actor a GPU; on CPUs, one a CPU but one, left for Ray Data's own tasks
        actors = gpus or max(1, int(resources.get("CPU", 1)) - 1)
        dataset = ray.data.from_items(
            [row_of(source) for source in todo], override_num_blocks=max(1, math.ceil(len(todo) / job.batch_size))
        )
        classified = dataset.map_batches(
            RayClassifier,
            fn_constructor_kwargs=dict(
                settings=job.settings, label_set=job.label_set, decode_workers=job.decode_workers
            ),
            batch_size=job.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            num_gpus=1 if gpus else 0,
            udf_modifying_row_count=False,
        )
        try:
            for rows in classified.iter_batches(batch_size=None, batch_format="numpy"):
                yield Batch([json.loads(record) for record in rows["record"]], np.asarray(rows["embedding"]))
        except ray.exceptions.RayError as error:
            raise ServiceError(f"the Ray job failed: {str(error).strip().splitlines()[-1]}", "ray_failed") from error
    finally:
        if started_here:
            ray.shutdown()


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise StartupError(
            f"--ray needs Ray Data, which is not installed ({error}): pip install '.[ray]' (or 'ray[data]')"
        ) from error
    return ray
