"""clip-eval: zero-shot classification of a labeled image set, against every class name at once.

    clip-eval CHECKPOINT FOLDER                     # one sub-folder per class ("hot_dog" -> "hot dog")
    clip-eval CHECKPOINT DATA_DIR --style twitter   # the builder's index.jsonl, one style (and --splits)
    clip-eval CHECKPOINT DATA_DIR --emoji           # the emoji report on the Twemoji test style
    ... --json                                      # machine-readable output

Class embeddings come from model.zero_shot.label_embeddings (prompt ensembling over the
checkpoint's zero_shot_templates, or --templates). Figures are percentages.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import zero_shot
from .checkpoint import load_pretrained, load_tokenizer
from .clip import CLIP
from .data.emoji_catalog import EVERYDAY, TEST_STYLE, VALIDATION_STYLE, load_paraphrases
from .data.index import concept_key, concept_labels, read_index
from .errors import ModelError
from .preprocess import open_images
from .tokenizer import Tokenizer

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Candidates for zero_shot_templates, compared on the validation style only.
CANDIDATE_TEMPLATES = ("{}", "an emoji of {}.", "a {} emoji.")


@dataclass
class LabeledImages:
    paths: list[Path]
    labels: list[int]  # index into class_names
    class_names: list[str]
    groups: list[str] = field(default_factory=list)  # per image, for the breakdown (may be empty)
    concepts: list[str] = field(default_factory=list)  # per class: concept key (index sets only)

    def subset(self, keep: Sequence[int]) -> LabeledImages:
        return LabeledImages(
            [self.paths[i] for i in keep],
            [self.labels[i] for i in keep],
            self.class_names,
            [self.groups[i] for i in keep] if self.groups else [],
            self.concepts,
        )


def from_folder(root: str | Path) -> LabeledImages:
    root = Path(root)
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    paths, labels = [], []
    for label, directory in enumerate(classes):
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    if not paths:
        raise ModelError(f"{root} has no images in class sub-folders (FOLDER/<class name>/<image>)")
    names = [d.name.replace("_", " ") for d in classes]
    return LabeledImages(paths, labels, names, [names[label] for label in labels])


def from_index(data_dir: str | Path, style: str | None = None, splits: Sequence[str] | None = None) -> LabeledImages:
    """Base images (no skin-tone variants) of one style and splits; classes: every concept in the index."""
    data_dir = Path(data_dir)
    index = data_dir / "index.jsonl" if data_dir.is_dir() else data_dir
    if not index.is_file():
        raise ModelError(f"{index} not found: give a folder of class sub-folders or a DATA_DIR with index.jsonl")
    records = read_index(index)
    labels = concept_labels(records)
    row = {key: i for i, key in enumerate(labels)}
    chosen = [
        r
        for r in records
        if (style is None or r.get("style") == style)
        and (splits is None or r.get("split") in splits)
        and r.get("variant", r.get("concept")) == r.get("concept")
    ]
    if not chosen:
        raise ModelError(f"{index} has no base images of style {style!r} in splits {splits}")
    return LabeledImages(
        [index.parent / r["image"] for r in chosen],
        [row[concept_key(r)] for r in chosen],
        list(labels.values()),
        [r.get("group", "") for r in chosen],
        list(labels),
    )


@torch.inference_mode()
def embed_images(clip: CLIP, paths: Sequence[Path], batch_size: int = 256) -> torch.Tensor:
    chunks = [
        clip.encode_image(open_images(paths[start : start + batch_size], clip.config))
        for start in range(0, len(paths), batch_size)
    ]
    return torch.cat(chunks)


def scores(images: torch.Tensor, labels: Sequence[int], classes: torch.Tensor, groups: Sequence[str] = ()) -> dict:
    """Top-1/top-5 (percent) of image embeddings against class embeddings, with a per-group breakdown."""
    ranked = (images @ classes.t()).topk(min(5, len(classes)), dim=1).indices
    truth = torch.tensor(list(labels)).view(-1, 1)
    top1 = (ranked[:, :1] == truth).any(dim=1)
    top5 = (ranked == truth).any(dim=1)
    result: dict[str, Any] = {"n": len(truth), "top1": _percent(top1), "top5": _percent(top5)}
    if groups:
        rows = defaultdict(list)
        for i, group in enumerate(groups):
            rows[group].append(i)
        result["groups"] = {
            g: {"n": len(r), "top1": _percent(top1[r]), "top5": _percent(top5[r])} for g, r in sorted(rows.items())
        }
    return result


def _percent(hits: torch.Tensor) -> float:
    return round(100.0 * hits.float().mean().item(), 2) if len(hits) else float("nan")


def templates_of(clip: CLIP, templates: Sequence[str] | None = None) -> list[str]:
    return list(templates or clip.config.zero_shot_templates or zero_shot.DEFAULT_TEMPLATES)


def evaluate(clip: CLIP, tokenizer: Tokenizer, data: LabeledImages, templates: Sequence[str] | None = None) -> dict:
    classes = zero_shot.label_embeddings(clip, tokenizer, data.class_names, templates_of(clip, templates))
    return scores(embed_images(clip, data.paths), data.labels, classes, data.groups)


def emoji_report(
    clip: CLIP,
    tokenizer: Tokenizer,
    data_dir: str | Path,
    style: str = TEST_STYLE,
    templates: Sequence[str] | None = None,
) -> dict:
    """On one style: all concepts, seen vs unseen, the 10-way everyday set, the paraphrase set."""
    templates = templates_of(clip, templates)
    data = from_index(data_dir, style=style)
    images = embed_images(clip, data.paths)
    names = data.class_names
    classes = zero_shot.label_embeddings(clip, tokenizer, names, templates)
    splits = {r["image"]: r.get("split", "") for r in read_index(Path(data_dir) / "index.jsonl")}
    unseen = [
        i for i, path in enumerate(data.paths) if splits[path.relative_to(Path(data_dir)).as_posix()].endswith("unseen")
    ]
    seen = sorted(set(range(len(data.paths))) - set(unseen))

    def on(
        rows: list[int], class_embeddings: torch.Tensor = classes, labels: Sequence[int] | None = None, groups=()
    ) -> dict:
        labels = labels if labels is not None else [data.labels[i] for i in rows]
        return scores(images[rows], labels, class_embeddings, groups)

    concept_of_image = [data.concepts[label] for label in data.labels]
    everyday_rows = [i for i, c in enumerate(concept_of_image) if c in EVERYDAY]
    everyday_words = list(EVERYDAY.values())
    everyday = on(
        everyday_rows,
        zero_shot.label_embeddings(clip, tokenizer, everyday_words, templates),
        [everyday_words.index(EVERYDAY[concept_of_image[i]]) for i in everyday_rows],
    )
    pairs = load_paraphrases()
    paraphrase_rows = [i for i, c in enumerate(concept_of_image) if c in pairs]
    _, swapped = synonym_classes(clip, tokenizer, data.concepts, classes, templates)
    paraphrase = {
        "n": len(paraphrase_rows),
        "synonym_top1": on(paraphrase_rows, swapped)["top1"],
        "original_top1": on(paraphrase_rows)["top1"],
    }
    return {
        "style": style,
        "templates": templates,
        "all": on(list(range(len(data.paths))), groups=data.groups),
        "seen": on(seen),
        "unseen": on(unseen),
        "everyday": {**everyday, "correct": round(everyday["top1"] * everyday["n"] / 100)},
        "paraphrase": paraphrase,
    }


def synonym_classes(
    clip: CLIP, tokenizer: Tokenizer, concepts: Sequence[str], classes: torch.Tensor, templates: Sequence[str]
) -> tuple[list[int], torch.Tensor]:
    """The paraphrase set's class embeddings: (the rows of the paired concepts, ``classes`` with each of
    those rows' names swapped for its synonym; every other class as before)."""
    pairs = load_paraphrases()
    renamed = [row for row, concept in enumerate(concepts) if concept in pairs]
    swapped = classes.clone()
    if renamed:
        swapped[renamed] = zero_shot.label_embeddings(
            clip, tokenizer, [pairs[concepts[row]]["synonym"] for row in renamed], templates
        )
    return renamed, swapped


def choose_templates(
    clip: CLIP,
    tokenizer: Tokenizer,
    data_dir: str | Path,
    candidates: Sequence[str] = CANDIDATE_TEMPLATES,
    most: int = 2,
) -> list[str]:
    """Rank single templates by top-1 on the validation style, then keep the best-ranked prefix
    (up to ``most``: every template costs a text-tower pass per class at serving time) whose
    ensemble scores highest. The test style plays no part."""
    data = from_index(data_dir, style=VALIDATION_STYLE)
    images = embed_images(clip, data.paths)
    single = {t: zero_shot.label_embeddings(clip, tokenizer, data.class_names, [t]) for t in candidates}

    def top1(templates: Sequence[str]) -> float:  # the ensemble is label_embeddings' mean, renormalised
        classes = torch.nn.functional.normalize(torch.stack([single[t] for t in templates]).mean(dim=0), dim=-1)
        return scores(images, data.labels, classes)["top1"]

    ranked = sorted(candidates, key=lambda template: top1([template]), reverse=True)
    best = max(range(1, min(most, len(ranked)) + 1), key=lambda k: top1(ranked[:k]))
    print(
        f"zero-shot templates on {VALIDATION_STYLE} (top-1 %): "
        + ", ".join(f"{t!r} {top1([t]):.1f}" for t in ranked)
        + f"; chosen {ranked[:best]} {top1(ranked[:best]):.1f}",
        file=sys.stderr,
    )
    return ranked[:best]


# ----------------------------------------------------------------------------- output


def format_report(report: dict) -> str:
    lines = [
        f"style {report['style']}, templates {report['templates']}",
        "| set | images | top-1 % | top-5 % |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ("all", "seen", "unseen"):
        row = report[name]
        lines.append(f"| {name} concepts | {row['n']} | {row['top1']:.1f} | {row['top5']:.1f} |")
    everyday, paraphrase = report["everyday"], report["paraphrase"]
    lines.append(
        f"| 10-way everyday set | {everyday['n']} | {everyday['top1']:.1f} ({everyday['correct']}/{everyday['n']}) | |"
    )
    lines.append(f"| paraphrase set, synonyms | {paraphrase['n']} | {paraphrase['synonym_top1']:.1f} | |")
    lines.append(f"| paraphrase set, original names | {paraphrase['n']} | {paraphrase['original_top1']:.1f} | |")
    return "\n".join(lines) + "\n\n" + format_groups(report["all"])


def format_groups(result: dict) -> str:
    lines = [f"top-1 {result['top1']:.1f}%  top-5 {result['top5']:.1f}%  ({result['n']} images)"]
    for group, row in result.get("groups", {}).items():
        lines.append(f"  {group or '(none)':<24} {row['n']:>5}  top-1 {row['top1']:5.1f}  top-5 {row['top5']:5.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clip-eval",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("source", type=Path, help="a folder of class sub-folders, or a DATA_DIR with index.jsonl")
    parser.add_argument("--style", help="index sets: only this style (--emoji: default twitter)")
    parser.add_argument("--splits", help="index sets: comma-separated splits, e.g. test,test_unseen")
    parser.add_argument("--emoji", action="store_true", help="the emoji report: all/seen/unseen, 10-way, paraphrases")
    parser.add_argument(
        "--templates", nargs="+", help="prompt templates (default: the checkpoint's zero_shot_templates)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        clip, tokenizer = load_pretrained(args.checkpoint), load_tokenizer(args.checkpoint)
        if args.emoji:
            result = emoji_report(clip, tokenizer, args.source, args.style or TEST_STYLE, args.templates)
            text = format_report(result)
        else:
            is_index = (args.source / "index.jsonl").is_file() or args.source.suffix == ".jsonl"
            data = (
                from_index(args.source, args.style, args.splits.split(",") if args.splits else None)
                if is_index
                else from_folder(args.source)
            )
            result = evaluate(clip, tokenizer, data, args.templates)
            text = format_groups(result)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
