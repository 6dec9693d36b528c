"""Build the emoji image-caption dataset from pinned npm packages.

    python -m model.data.emoji fetch                      # pre-fetch the pinned packages (CI)
    python -m model.data.emoji build DATA_DIR [--only 1F431,2764]
    python -m model.data.emoji check-paraphrases DATA_DIR

DATA_DIR gets images/<style>/<hexcode>.png and index.jsonl (format: model/data/index.py,
fields and splits: docs/data.md). Re-running a build skips images that already exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from model.data.emoji_catalog import (
    EVERYDAY,
    TEST_STYLE,
    VALIDATION_STYLE,
    Concept,
    held_out_pattern,
    is_unseen,
    load_concepts,
    load_paraphrases,
    split_of,
    variant_captions,
)
from model.data.emoji_sources import (
    EMOJIBASE,
    FLUENT,
    GOOGLE,
    OPENMOJI,
    TWITTER,
    EmojiDataError,
    Package,
    default_cache_dir,
    extract,
    fetch_all,
    list_fluent_files,
    list_hexcode_files,
    strip_fe0f,
)
from model.data.index import read_index, write_index

__all__ = ["EVERYDAY", "TEST_STYLE", "VALIDATION_STYLE", "read_index", "build", "check_paraphrases"]

SVG_SIZE = 128  # raster sources keep their native 64 px
MIN_STYLES = 3  # a concept needs its base emoji in at least this many styles


@dataclass(frozen=True)
class Style:
    name: str
    package: Package
    directory: str  # inside the package root
    by_label: bool = False  # fluentui-emoji names files by label, the others by hexcode

    @property
    def is_svg(self) -> bool:
        return self.package in (OPENMOJI, FLUENT)


STYLES = (
    Style("google", GOOGLE, "img/google/64"),
    Style("twitter", TWITTER, "img/twitter/64"),
    Style("openmoji-color", OPENMOJI, "color/svg"),
    Style("openmoji-black", OPENMOJI, "black/svg"),
    Style("fluent-color", FLUENT, "icons/modern", by_label=True),
    Style("fluent-flat", FLUENT, "icons/flat", by_label=True),
    Style("fluent-high-contrast", FLUENT, "icons/high-contrast", by_label=True),
)


@dataclass(frozen=True)
class Job:
    """One output image: where it comes from and where it goes."""

    source: Path
    target: Path
    render: bool  # SVG to render, else a PNG to copy


# ----------------------------------------------------------------------------- finding images


def style_sources(style: Style, root: Path, concepts: list[Concept]) -> dict[str, Path]:
    """variant hexcode -> source file, for every variant this style draws."""
    directory = root / style.directory
    if not style.by_label:
        return list_hexcode_files(directory, ".svg" if style.is_svg else ".png")
    files = list_fluent_files(directory)
    found = {}
    for concept in concepts:
        for variant in concept.variants:
            stem = next((name for name in variant.fluent_names if name in files), None)
            if stem is not None:
                found[variant.hexcode] = files[stem]
    return found


def select_concepts(
    concepts: list[Concept], sources: dict[str, dict[str, Path]], only: list[str] | None
) -> list[Concept]:
    """Concepts whose base emoji is drawn by >= MIN_STYLES styles (optionally just `only`)."""
    eligible = [c for c in concepts if sum(c.hexcode in files for files in sources.values()) >= MIN_STYLES]
    if only is None:
        return eligible
    wanted = {strip_fe0f(h) for h in only}
    missing = wanted - {c.hexcode for c in eligible}
    if missing:
        raise EmojiDataError(
            f"--only names emoji that are not concepts (unknown, a skin tone, or in < {MIN_STYLES} styles): {sorted(missing)}"
        )
    return [c for c in eligible if c.hexcode in wanted]


def plan(concepts: list[Concept], sources: dict[str, dict[str, Path]], data_dir: Path) -> tuple[list[Job], list[dict]]:
    """Every (concept, variant, style) image to produce, and its index record."""
    paraphrases = load_paraphrases()
    held_out = held_out_pattern(paraphrases)
    jobs, records = [], []
    for concept in concepts:
        for variant in concept.variants:
            captions = variant_captions(concept, variant, held_out)
            for style in STYLES:
                source = sources[style.name].get(variant.hexcode)
                if source is None:
                    continue
                image = Path("images") / style.name / f"{variant.hexcode}.png"
                jobs.append(Job(source, data_dir / image, render=style.is_svg))
                records.append(
                    {
                        "image": image.as_posix(),
                        "captions": captions,
                        "concept": concept.hexcode,
                        "variant": variant.hexcode,
                        "label": concept.label,
                        "style": style.name,
                        "group": concept.group,
                        "subgroup": concept.subgroup,
                        "split": split_of(style.name, concept.hexcode),
                    }
                )
    return jobs, records


# ----------------------------------------------------------------------------- producing images


def run_job(job: Job) -> None:
    """Render or copy one image; written under a temporary name so a killed build leaves no
    truncated PNG that a re-run would skip."""
    partial = job.target.with_name(job.target.name + ".partial")
    if job.render:
        import resvg_py  # imported here so that read_index, EVERYDAY etc. work without the data extra

        png = resvg_py.svg_to_bytes(svg_path=str(job.source), width=SVG_SIZE, height=SVG_SIZE, skip_system_fonts=True)
        partial.write_bytes(bytes(png))
    else:
        shutil.copyfile(job.source, partial)
    os.replace(partial, job.target)


def _require_svg_renderer() -> None:
    if importlib.util.find_spec("resvg_py") is None:
        raise EmojiDataError("resvg-py renders the SVG styles but is not installed: pip install -e '.[data]'")


def run_jobs(jobs: list[Job], workers: int) -> int:
    """Produce the images that do not exist yet; return how many were produced."""
    todo = [job for job in jobs if not job.target.exists()]
    for directory in {job.target.parent for job in todo}:
        directory.mkdir(parents=True, exist_ok=True)
    if workers <= 1 or len(todo) < 64:
        for job in todo:
            run_job(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run_job, todo, chunksize=32))
    return len(todo)


def copy_licenses(roots: dict[str, Path], data_dir: Path) -> None:
    """The art is Apache-2.0 / CC-BY 4.0 / CC BY-SA 4.0 / MIT: ship each license with it."""
    licenses = data_dir / "licenses"
    licenses.mkdir(parents=True, exist_ok=True)
    for name, root in roots.items():
        for candidate in ("LICENSE", "LICENSE.txt"):
            if (root / candidate).exists():
                shutil.copyfile(root / candidate, licenses / f"{name}.txt")


# ----------------------------------------------------------------------------- build


def build(
    data_dir: Path, cache_dir: Path | None = None, only: list[str] | None = None, workers: int | None = None
) -> list[dict]:
    """Build DATA_DIR/images and DATA_DIR/index.jsonl; return the index records."""
    started = time.perf_counter()
    cache_dir = cache_dir or default_cache_dir()
    packages = {style.package for style in STYLES} | {EMOJIBASE}
    roots = {package.name: extract(package, cache_dir) for package in sorted(packages, key=lambda p: p.name)}
    all_concepts = load_concepts(roots[EMOJIBASE.name])
    sources = {style.name: style_sources(style, roots[style.package.name], all_concepts) for style in STYLES}
    concepts = select_concepts(all_concepts, sources, only)
    jobs, records = plan(concepts, sources, data_dir)
    _require_svg_renderer()
    produced = run_jobs(jobs, workers or os.cpu_count() or 1)
    write_index(data_dir / "index.jsonl", records)
    copy_licenses(roots, data_dir)
    print(summary(concepts, records, produced, time.perf_counter() - started, _cpu_seconds()))
    return records


def _cpu_seconds() -> float:
    """CPU time of this process and its finished workers: on a shared machine wall time
    says more about the neighbours than about the build."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def summary(concepts: list[Concept], records: list[dict], produced: int, seconds: float, cpu_seconds: float) -> str:
    """A table of images per style and split, plus the concept counts."""
    unseen = sum(is_unseen(c.hexcode) for c in concepts)
    splits = sorted({r["split"] for r in records})
    counts = Counter((r["style"], r["split"]) for r in records)
    width = max(len(s.name) for s in STYLES)
    lines = [
        f"concepts: {len(concepts)} ({len(concepts) - unseen} seen, {unseen} unseen)",
        f"images: {len(records)} ({produced} produced now, {len(records) - produced} already there)",
        " " * width + "".join(f"{s:>12}" for s in splits) + f"{'total':>12}",
    ]
    for style in STYLES:
        row = [counts[style.name, split] for split in splits]
        lines.append(f"{style.name:<{width}}" + "".join(f"{n:>12}" for n in row) + f"{sum(row):>12}")
    lines.append(f"time: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- paraphrases


def check_paraphrases(data_dir: Path) -> list[str]:
    """Offences against the paraphrase evaluation: a synonym in a training caption.

    Returns human-readable lines, empty when the dataset is clean.
    """
    held_out = held_out_pattern(load_paraphrases())
    offences = []
    for record in read_index(data_dir / "index.jsonl"):
        if record.get("split") != "train":
            continue
        for caption in record["captions"]:
            match = held_out.search(caption)
            if match:
                offences.append(f"{record['image']}: synonym {match.group(0)!r} in training caption {caption!r}")
    return offences


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.data.emoji", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cache", type=Path, default=None, help="tarball cache (default $CLIP_EMOJI_CACHE or ~/.cache/clip-emoji)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch, verify and unpack the pinned npm packages")
    build_parser = commands.add_parser("build", help="build DATA_DIR/images and DATA_DIR/index.jsonl")
    build_parser.add_argument("data_dir", type=Path)
    build_parser.add_argument("--only", help="comma-separated concept hexcodes, e.g. 1F431,2764")
    build_parser.add_argument("--workers", type=int, default=None, help="SVG render processes (default: all cores)")
    check_parser = commands.add_parser(
        "check-paraphrases", help="fail if a paraphrase synonym is in a training caption"
    )
    check_parser.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            for name, root in fetch_all(args.cache or default_cache_dir()).items():
                print(f"{name}: {root}")
        elif args.command == "build":
            only = args.only.split(",") if args.only else None
            build(args.data_dir, args.cache, only, args.workers)
        else:
            offences = check_paraphrases(args.data_dir)
            for line in offences:
                print(line, file=sys.stderr)
            if offences:
                return 1
            print(f"ok: no paraphrase synonym appears in a training caption of {args.data_dir}")
    except EmojiDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
