"""Build the emoji image-caption dataset from pinned npm packages.

    python -m model.data.emoji fetch                      # pre-fetch the pinned packages (CI)
    python -m model.data.emoji build DATA_DIR [--only 1F431,2764]
    python -m model.data.emoji check-paraphrases DATA_DIR

DATA_DIR gets images/<style>/<hexcode>.png, index.jsonl (format: model/data/index.py, fields and
splits: docs/data.md) and report.json (per style: the concepts it draws, its misses, the images
the leak check dropped). Re-running a build skips images that already exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

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
from model.data.emoji_leaks import is_twemoji_copy, leak_features
from model.data.emoji_names import NameMatch, match_names
from model.data.emoji_sources import (
    EMOJIBASE,
    EMOJIONE,
    EMOJIONE_V1,
    FLUENT,
    FLUENT_3D,
    GOOGLE,
    ICONIFY_SVG_DIR,
    NOTO_V1,
    OPENMOJI,
    STREAMLINE,
    TWITTER,
    EmojiDataError,
    Package,
    default_cache_dir,
    extract,
    fetch_all,
    license_text,
    list_fluent_files,
    list_hexcode_files,
    load_iconify,
    strip_fe0f,
)
from model.data.index import read_index, write_index

__all__ = ["EVERYDAY", "TEST_STYLE", "VALIDATION_STYLE", "read_index", "build", "check_paraphrases"]

SVG_SIZE = 128  # SVGs render at this size and larger rasters shrink to it; 64 px PNGs stay as shipped
MIN_STYLES = 3  # a concept needs its base emoji in at least this many of the core styles
REPORT = "report.json"


@dataclass(frozen=True)
class Style:
    name: str
    package: Package
    directory: str  # inside the package root
    naming: str = "hexcode"  # files named by codepoints; "fluent": by label; "iconify": CLDR-style slugs
    suffix: str = ".png"
    # The core styles alone decide which emoji are concepts, so that styles added later leave the
    # concept set and its splits as they were (every figure stays comparable); the others are
    # checked for Twemoji glyphs (see emoji_leaks).
    core: bool = True

    @property
    def kind(self) -> str:
        """How a source file becomes the dataset's PNG (a Job's kind)."""
        return {".svg": "render", ".png": "copy"}.get(self.suffix, "convert")


def _iconify(name: str, package: Package) -> Style:
    return Style(name, package, ICONIFY_SVG_DIR, naming="iconify", suffix=".svg", core=False)


STYLES = (
    Style("google", GOOGLE, "img/google/64"),
    Style("twitter", TWITTER, "img/twitter/64"),
    Style("openmoji-color", OPENMOJI, "color/svg", suffix=".svg"),
    Style("openmoji-black", OPENMOJI, "black/svg", suffix=".svg"),
    Style("fluent-color", FLUENT, "icons/modern", naming="fluent", suffix=".svg"),
    Style("fluent-flat", FLUENT, "icons/flat", naming="fluent", suffix=".svg"),
    Style("fluent-high-contrast", FLUENT, "icons/high-contrast", naming="fluent", suffix=".svg"),
    Style("fluent-3d", FLUENT_3D, "assets", suffix=".webp", core=False),
    _iconify("emojione", EMOJIONE),
    _iconify("emojione-v1", EMOJIONE_V1),
    _iconify("noto-v1", NOTO_V1),
    _iconify("streamline", STREAMLINE),
)
NOTO_STYLE = "google"  # the leak check's yardstick: how close an honest drawing comes to Twemoji


@dataclass(frozen=True)
class Job:
    """One output image: where it comes from and where it goes."""

    source: Path
    target: Path
    kind: str  # "copy" a PNG as shipped, "render" an SVG, "convert" another raster (WebP) to PNG


# ----------------------------------------------------------------------------- finding images


def style_sources(style: Style, root: Path, concepts: list[Concept]) -> dict[str, Path]:
    """variant hexcode -> source file, for every variant this style draws."""
    directory = root / style.directory
    if style.naming == "hexcode":
        return list_hexcode_files(directory, style.suffix)
    if style.naming == "iconify":
        icon_set = load_iconify(root)
        return {hexcode: icon_set.icons[name] for hexcode, name in iconify_match(root, concepts).found.items()}
    files = list_fluent_files(directory)
    found = {}
    for concept in concepts:
        for variant in concept.variants:
            stem = next((name for name in variant.fluent_names if name in files), None)
            if stem is not None:
                found[variant.hexcode] = files[stem]
    return found


def iconify_match(root: Path, concepts: list[Concept]) -> NameMatch:
    icon_set = load_iconify(root)
    return match_names(concepts, set(icon_set.icons), icon_set.aliases)


def select_concepts(
    concepts: list[Concept], sources: dict[str, dict[str, Path]], only: list[str] | None
) -> list[Concept]:
    """Concepts whose base emoji is drawn by >= MIN_STYLES core styles (optionally just `only`)."""
    eligible = [c for c in concepts if styles_drawing(c, sources, core_only=True) >= MIN_STYLES]
    if only is None:
        return eligible
    wanted = {strip_fe0f(h) for h in only}
    missing = wanted - {c.hexcode for c in eligible}
    if missing:
        raise EmojiDataError(
            f"--only names emoji that are not concepts (unknown, a skin tone, or in < {MIN_STYLES} core styles): "
            f"{sorted(missing)}"
        )
    return [c for c in eligible if c.hexcode in wanted]


def styles_drawing(concept: Concept, sources: dict[str, dict[str, Path]], core_only: bool) -> int:
    return sum(concept.hexcode in sources[s.name] for s in STYLES if s.core or not core_only)


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
                jobs.append(Job(source, data_dir / image, style.kind))
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
    """Render, convert or copy one image; written under a temporary name so a killed build leaves
    no truncated PNG that a re-run would skip."""
    partial = job.target.with_name(job.target.name + ".partial")
    if job.kind == "render":
        import resvg_py  # imported here so that read_index, EVERYDAY etc. work without the data extra

        png = resvg_py.svg_to_bytes(svg_path=str(job.source), width=SVG_SIZE, height=SVG_SIZE, skip_system_fonts=True)
        partial.write_bytes(bytes(png))
    elif job.kind == "convert":
        with Image.open(job.source) as image:
            rgba = image.convert("RGBA")
        if rgba.size != (SVG_SIZE, SVG_SIZE):
            rgba = rgba.resize((SVG_SIZE, SVG_SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0)
        rgba.save(partial, format="PNG", optimize=True)
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


def copy_licenses(packages: dict[Package, Path], data_dir: Path) -> None:
    """The art is Apache-2.0 / CC-BY 4.0 / CC BY-SA 4.0 / MIT: ship each license with it."""
    licenses = data_dir / "licenses"
    licenses.mkdir(parents=True, exist_ok=True)
    for package, root in packages.items():
        (licenses / f"{package.file_stem}.txt").write_text(license_text(package, root))


# ----------------------------------------------------------------------------- the leak check


def leak_check(records: list[dict], data_dir: Path) -> tuple[list[dict], list[dict]]:
    """Split the records into those kept and the non-core images dropped as Twemoji copies.

    An image is compared with the Twemoji and Noto images of its own emoji (skin tone included);
    where either is missing there is no yardstick and the image is kept.
    """
    core = {s.name for s in STYLES if s.core}
    image_of = {(r["style"], r["variant"]): data_dir / r["image"] for r in records}
    features: dict[Path, object] = {}

    def feature(path: Path):
        if path not in features:
            features[path] = leak_features(path)
        return features[path]

    kept, dropped = [], []
    for record in records:
        twemoji, noto = image_of.get((TEST_STYLE, record["variant"])), image_of.get((NOTO_STYLE, record["variant"]))
        if record["style"] in core or twemoji is None or noto is None:
            kept.append(record)
            continue
        drop, to_twemoji, noto_to_twemoji = is_twemoji_copy(
            feature(data_dir / record["image"]), feature(twemoji), feature(noto)
        )
        if drop:
            dropped.append({**record, "distance_to_twemoji": to_twemoji, "noto_to_twemoji": noto_to_twemoji})
        else:
            kept.append(record)
    return kept, dropped


# ----------------------------------------------------------------------------- build


def build(
    data_dir: Path, cache_dir: Path | None = None, only: list[str] | None = None, workers: int | None = None
) -> list[dict]:
    """Build DATA_DIR/images, DATA_DIR/index.jsonl and DATA_DIR/report.json; return the index records."""
    started = time.perf_counter()
    cache_dir = cache_dir or default_cache_dir()
    packages = sorted({style.package for style in STYLES} | {EMOJIBASE}, key=lambda p: p.name)
    roots = {package.name: extract(package, cache_dir) for package in packages}
    all_concepts = load_concepts(roots[EMOJIBASE.name])
    sources = {style.name: style_sources(style, roots[style.package.name], all_concepts) for style in STYLES}
    concepts = select_concepts(all_concepts, sources, only)
    jobs, records = plan(concepts, sources, data_dir)
    _require_svg_renderer()
    produced = run_jobs(jobs, workers or os.cpu_count() or 1)
    records, dropped = leak_check(records, data_dir)
    write_index(data_dir / "index.jsonl", records)
    copy_licenses({package: roots[package.name] for package in packages}, data_dir)
    report = build_report(all_concepts, concepts, sources, roots, records, dropped, full=only is None)
    report["time"] = {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(_cpu_seconds(), 1)}
    (data_dir / REPORT).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(summary(report, records, produced, len(jobs)))
    return records


def _cpu_seconds() -> float:
    """CPU time of this process and its finished workers: on a shared machine wall time
    says more about the neighbours than about the build."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def build_report(
    all_concepts: list[Concept],
    concepts: list[Concept],
    sources: dict[str, dict[str, Path]],
    roots: dict[str, Path],
    records: list[dict],
    dropped: list[dict],
    full: bool,
) -> dict:
    """What report.json holds: per style, the concepts it draws (base image kept) and those it
    misses (none guessed: a miss is an emoji no rule of emoji_names matched, or an ambiguous
    one), the leak check's drops; and the emoji that only the new styles would make concepts."""
    drawn = {(r["style"], r["concept"]) for r in records if r["variant"] == r["concept"]}
    report: dict = {
        "concepts": len(concepts),
        "unseen": sum(is_unseen(c.hexcode) for c in concepts),
        "validation_style": VALIDATION_STYLE,
        "test_style": TEST_STYLE,
        "leak_check": "dropped if closer to its Twemoji image than its Noto image is (model/data/emoji_leaks.py)",
        "styles": {},
    }
    for style in STYLES:
        ambiguous = iconify_match(roots[style.package.name], concepts).ambiguous if style.naming == "iconify" else {}
        unmatched = {h for claimants in ambiguous.values() for h in claimants} - set(sources[style.name])
        drops = [d for d in dropped if d["style"] == style.name]
        report["styles"][style.name] = {
            "package": f"{style.package.name}@{style.package.version}",
            "license": style.package.license,
            "core": style.core,
            "concepts": sum((style.name, c.hexcode) in drawn for c in concepts),
            "images": sum(r["style"] == style.name for r in records),
            "leak_drops": len(drops),
            "leak_drops_by_group": dict(sorted(Counter(d["group"] for d in drops).items())),
            "dropped": [
                [d["variant"], d["label"], round(d["distance_to_twemoji"], 4), round(d["noto_to_twemoji"], 4)]
                for d in drops
            ],
            "misses": [
                [c.hexcode, c.label] + (["ambiguous name"] if c.hexcode in unmatched else [])
                for c in concepts
                if c.hexcode not in sources[style.name]
            ],
        }
    if full:
        report["newly_eligible"] = [
            [c.hexcode, c.label]
            for c in all_concepts
            if c not in concepts and styles_drawing(c, sources, core_only=False) >= MIN_STYLES
        ]
    return report


def summary(report: dict, records: list[dict], produced: int, planned: int) -> str:
    """A table of images per style and split, the concepts each style draws, the leak check's
    drops, plus the concept counts."""
    concepts, unseen = report["concepts"], report["unseen"]
    splits = sorted({r["split"] for r in records})
    counts = Counter((r["style"], r["split"]) for r in records)
    width = max(len(s.name) for s in STYLES)
    columns = [*splits, "total", "concepts", "misses", "leaks"]
    lines = [
        f"concepts: {concepts} ({concepts - unseen} seen, {unseen} unseen)",
        f"images: {len(records)} ({produced} produced now, {planned - produced} already there, "
        f"{planned - len(records)} dropped by the leak check)",
        " " * width + "".join(f"{c:>12}" for c in columns),
    ]
    for style in STYLES:
        row = [counts[style.name, split] for split in splits]
        about = report["styles"][style.name]
        row += [sum(row), about["concepts"], len(about["misses"]), about["leak_drops"]]
        lines.append(f"{style.name:<{width}}" + "".join(f"{n:>12}" for n in row))
    if "newly_eligible" in report:
        lines.append(f"in >= {MIN_STYLES} styles only with the new ones (not added): {len(report['newly_eligible'])}")
    lines.append(f"time: {report['time']['wall_s']} s wall, {report['time']['cpu_s']} s CPU; details in {REPORT}")
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
