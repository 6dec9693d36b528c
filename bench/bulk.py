"""clip-classify --out against its own ceiling, and the Ray path against the local one, in one run.

For 64 px PNGs (the pinned Twemoji, or generated ones where they are not fetched) and 640x480 JPEGs:
  - the ceiling: the engine alone on pre-decoded input (encode_images + logits, batches of --batch-size);
  - the local bulk path (app/bulk.py run_bulk: read, decode on --decode-workers threads, model, write JSONL);
  - with --ray, the Ray path against the local one on the same files (a local Ray instance capped at
    --ray-cpus CPUs), each run on half the files and on all of them, interleaved (local, Ray, local,
    Ray) so that the machine's load shifts hit both: wall time (model load, Ray's actor start
    included), the fixed cost and the images/s once running (the marginal rate: the other half of
    the images over the difference of the two wall times).
The engine-only and local images/s leave the model load out; Ray's own start (ray.init) is printed apart.
Each figure is the best of --repeats runs, interleaved with the runs it is compared to: on a shared
machine the load of others only ever slows a run down.

    python bench/bulk.py                          # the bundled checkpoint, 256 PNGs, 128 JPEGs, best of 3
    python bench/bulk.py --ray --pngs 512 --jpegs 256

Absolute numbers on a shared machine are noise; the ratios, measured in the same run, are the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bulk import BatchClassifier, BulkJob, LabelSet, run_bulk  # noqa: E402
from app.bulk_sources import find_sources  # noqa: E402
from app.settings import DEFAULT_CHECKPOINT, Settings  # noqa: E402
from bench.load import sample_jpeg  # noqa: E402
from model.data.emoji_sources import TWITTER, default_cache_dir  # noqa: E402

LABELS = ["cat", "dog", "pizza", "car", "house", "tree", "rocket", "apple", "ball", "book"]


def make_pngs(directory: Path, count: int) -> str:
    """``count`` 64 px PNGs: the pinned Twemoji where fetched, else generated. Says which."""
    directory.mkdir(parents=True)
    twemoji = default_cache_dir() / f"{TWITTER.name}-{TWITTER.version}" / "package" / "img" / "twitter" / "64"
    found = sorted(twemoji.glob("*.png"))[:count] if twemoji.is_dir() else []
    if len(found) == count:
        for path in found:
            shutil.copy(path, directory / path.name)
        return "Twemoji"
    for i in range(count):
        Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(directory / f"{i}.png")
    return "generated"


def make_jpegs(directory: Path, count: int) -> None:
    directory.mkdir(parents=True)
    for i in range(count):
        (directory / f"{i}.jpg").write_bytes(sample_jpeg(i, (640, 480)))


def engine_ceiling(classifier: BatchClassifier, directory: Path, batch_size: int) -> float:
    """images/s of the engine alone, on images decoded beforehand."""
    pixels = [classifier.decode(source) for source in find_sources([str(directory)])]
    batches = [torch.stack(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    classifier.engine.logits(classifier.engine.encode_images(batches[0]), classifier.classes)  # warm-up
    started = time.perf_counter()
    for batch in batches:
        classifier.engine.logits(classifier.engine.encode_images(batch), classifier.classes)
    return len(pixels) / (time.perf_counter() - started)


def bulk_run(job_for, inputs: list[str], name: str, use_ray: bool = False) -> tuple[float, float]:
    """(wall seconds of run_bulk, images/s it reports) for some inputs."""
    started = time.perf_counter()
    summary = run_bulk(job_for(inputs, name), progress=False, use_ray=use_ray)
    return time.perf_counter() - started, summary.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--pngs", type=int, default=256)
    parser.add_argument("--jpegs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also the Ray path (needs the ray extra)")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the best counts")
    args = parser.parse_args()

    settings = Settings(checkpoint=args.checkpoint, device="cpu")
    label_set = LabelSet.checked(LABELS, None, 5, settings)
    work = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    try:
        pngs, jpegs = work / "png", work / "jpeg"
        png_kind = make_pngs(pngs, args.pngs)
        make_jpegs(jpegs, args.jpegs)

        def job_for(inputs: list[str], name: str) -> BulkJob:
            out = work / f"{name}.jsonl"
            return BulkJob(
                tuple(inputs), out, label_set, settings, batch_size=args.batch_size, decode_workers=args.decode_workers
            )

        classifier = BatchClassifier(settings, label_set)
        print(
            f"checkpoint {args.checkpoint.name}, CPU, torch threads {torch.get_num_threads()}, "
            f"batch {args.batch_size}, {args.decode_workers} decode threads, {len(LABELS)} labels"
        )
        print(f"{'input':<26}{'images':>7}{'engine-only img/s':>19}{'local bulk img/s':>18}{'bulk/ceiling':>14}")
        for directory, label, count in (
            (pngs, f"64 px PNG ({png_kind})", args.pngs),
            (jpegs, "640x480 JPEG", args.jpegs),
        ):
            ceiling = rate = 0.0
            for repeat in range(args.repeats):
                ceiling = max(ceiling, engine_ceiling(classifier, directory, args.batch_size))
                rate = max(rate, bulk_run(job_for, [str(directory)], f"local-{directory.name}-{repeat}")[1])
            print(f"{label:<26}{count:>7}{ceiling:>19.1f}{rate:>18.1f}{rate / ceiling:>14.2f}")
        if args.ray:
            import ray

            started = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="warning")
            print(f"\nRay: ray.init (local instance, {args.ray_cpus} CPUs) {time.perf_counter() - started:.1f} s")
            print(f"{'input':<14}{'path':>7}{'wall s':>9}{'fixed s':>9}{'img/s running':>15}")
            for directory, label in ((pngs, "64 px PNG"), (jpegs, "640x480 JPEG")):
                files = sorted(str(path) for path in directory.iterdir())
                walls: dict[tuple[str, int], float] = {}
                for repeat in range(args.repeats):
                    for count in (len(files) // 2, len(files)):
                        for path in ("local", "Ray"):
                            name = f"{path}-{count}-{directory.name}-{repeat}"
                            wall = bulk_run(job_for, files[:count], name, use_ray=path == "Ray")[0]
                            walls[path, count] = min(wall, walls.get((path, count), wall))
                for path in ("local", "Ray"):
                    half, whole = walls[path, len(files) // 2], walls[path, len(files)]
                    running = (len(files) - len(files) // 2) / (whole - half) if whole > half else float("nan")
                    fixed = whole - len(files) / running
                    print(f"{label:<14}{path:>7}{whole:>9.1f}{fixed:>9.1f}{running:>15.1f}")
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
