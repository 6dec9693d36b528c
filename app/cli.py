"""Console scripts: ``clip-serve`` (the HTTP server) and ``clip-classify`` (local, no server)."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .exceptions import InvalidInput, ServiceError, StartupError
from .settings import Settings, describe_settings_error
from .workers import LOG_FORMAT


def serve(argv: list[str] | None = None) -> None:
    """Run the server on CLIP_HOST:CLIP_PORT; settings come from CLIP_* environment variables."""
    import uvicorn

    from .main import check_startup, create_app
    from .workers import serve_workers

    parser = argparse.ArgumentParser(prog="clip-serve", description=serve.__doc__)
    parser.parse_args(argv)
    try:
        settings = Settings()
        app = create_app(settings) if settings.workers == 1 else None
        if app is None:  # each worker builds its own app; this process fails as early as a single one would
            check_startup(settings)
    except ValidationError as error:
        print(f"clip-serve: {describe_settings_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except StartupError as error:
        print(f"clip-serve: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    if app is None:
        serve_workers(settings)  # app/workers.py: N processes on one port, each draining as below
        return
    # uvicorn handles SIGTERM: stop accepting, let requests in flight run for CLIP_DRAIN_SECONDS (those
    # still running then get 503 shutting_down, app/middleware.py's ShutdownCutoff), run the app's shutdown
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.drain_seconds,
    )


def classify(argv: list[str] | None = None) -> None:
    """Classify local images against labels with the same engine as the server, no server needed."""
    parser = argparse.ArgumentParser(prog="clip-classify", description=classify.__doc__)
    parser.add_argument(
        "images", nargs="+", metavar="INPUT", help="image files; with --out also directories, globs, .tar archives"
    )
    parser.add_argument("--label", action="append", required=True, dest="labels", help="a class name (repeat)")
    parser.add_argument(
        "--template",
        action="append",
        dest="templates",
        help="prompt template with {} (repeat to ensemble); default: the checkpoint's own",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint directory (default: CLIP_CHECKPOINT or the bundled one)"
    )
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the same JSON as POST /classify")
    bulk = parser.add_argument_group("bulk (docs/bulk.md)")
    bulk.add_argument("--out", type=Path, help="write one line per image, as it goes, to this .jsonl or .csv")
    bulk.add_argument("--embeddings", type=Path, help="also write the image embeddings to this .npy (row i = line i)")
    bulk.add_argument("--resume", action="store_true", help="skip the images already in --out and append")
    bulk.add_argument("--batch-size", type=int, default=32, help="images a forward pass (default 32)")
    bulk.add_argument("--decode-workers", type=int, default=2, help="threads that read and decode (default 2)")
    bulk.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    bulk.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray Data (pip install '.[ray]'): a local instance, RAY_ADDRESS, or --ray=ADDRESS",
    )
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            raise SystemExit(_classify_bulk(args))
        _refuse_bulk_options_without_out(args)
        result = classify_files(
            [Path(image) for image in args.images], args.labels, args.templates, args.checkpoint, args.top_k
        )
    except ValidationError as error:
        print(f"clip-classify: {describe_settings_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ServiceError, OSError) as error:
        print(f"clip-classify: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for image in result["results"]:
        print(image["filename"])
        for score in image["top_k"]:
            print(f"  {score['probability']:7.2%}  {score['label']}")


def _classify_bulk(args: argparse.Namespace) -> int:
    """--out: the bulk run (app/bulk.py); exit status 1 when any image in the output failed."""
    from .bulk import BulkJob, LabelSet, run_bulk
    from .main import check_startup

    if args.json:
        raise InvalidInput("--json prints the POST /classify answer; with --out the file's suffix picks the format")
    if args.ray and Path(args.ray).exists():
        raise InvalidInput(f"--ray took {args.ray!r}, an input, as its address: put --ray after the inputs")
    settings = Settings(checkpoint=args.checkpoint) if args.checkpoint else Settings()
    check_startup(settings)
    job = BulkJob(
        tuple(args.images),
        args.out,
        LabelSet.checked(args.labels, args.templates, args.top_k, settings),
        settings,
        args.embeddings,
        args.resume,
        args.batch_size,
        args.decode_workers,
    )
    summary = run_bulk(job, progress=not args.quiet, use_ray=args.ray is not None, ray_address=args.ray or None)
    if not args.quiet:
        print(
            f"clip-classify: {summary.images} images in {args.out}, {summary.failed} failed; "
            f"{summary.classified} classified now in {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s)",
            file=sys.stderr,
        )
    return 1 if summary.failed else 0


def _refuse_bulk_options_without_out(args: argparse.Namespace) -> None:
    given = [name for name in ("embeddings", "resume", "ray") if getattr(args, name) not in (None, False)]
    if given:
        raise InvalidInput(f"--{given[0]} needs --out results.jsonl (or .csv)")
    collections = [image for image in args.images if _is_collection(image)]
    if collections:
        raise InvalidInput(f"{collections[0]}: directories, globs and .tar archives need --out results.jsonl (or .csv)")


def _is_collection(image: str) -> bool:
    path = Path(image)
    return path.is_dir() or image.lower().endswith(".tar") or (not path.exists() and glob.has_magic(image))


def classify_files(
    paths: list[Path],
    labels: list[str],
    templates: list[str] | None = None,
    checkpoint: Path | None = None,
    top_k: int = 5,
) -> dict:
    """The /classify answer for local files, through the same service code as the server."""
    import asyncio

    from .main import check_startup
    from .service import ZeroShotService

    overrides: dict[str, Any] = {"checkpoint": checkpoint} if checkpoint else {}
    settings = Settings(**overrides, batch_wait_ms=0, max_images=max(len(paths), 1), max_queue=max(len(paths), 1))
    check_startup(settings)
    uploads = [(str(path), path.read_bytes()) for path in paths]

    async def run() -> dict:
        service = ZeroShotService(settings)
        service.start()
        await service.wait_loaded()
        try:
            return await service.classify(uploads, labels, templates, top_k)
        finally:
            await service.stop()

    return asyncio.run(run())


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    {"serve": serve, "classify": classify}[sys.argv[1]](sys.argv[2:])
