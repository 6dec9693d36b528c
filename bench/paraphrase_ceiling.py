"""How far the locked text tower lets the paraphrase set go: give each paired concept an "image"
embedding equal to its own name's class embedding (where the training objective pulls its images),
swap in the synonym as clip-eval's paraphrase set does, and count how often the synonym still wins
among all the concepts' names.

    python bench/paraphrase_ceiling.py CHECKPOINT DATA_DIR [--misses]

The checkpoint's zero-shot templates and text projection are used, so the figure is that model's
text side; the concepts and names are DATA_DIR's (any style: the names do not depend on it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import zero_shot  # noqa: E402
from model.checkpoint import load_pretrained, load_tokenizer  # noqa: E402
from model.data.emoji_catalog import TEST_STYLE, load_paraphrases  # noqa: E402
from model.eval import from_index, synonym_classes, templates_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--misses", action="store_true", help="list each synonym that loses, and to what")
    args = parser.parse_args()
    clip, tokenizer = load_pretrained(args.checkpoint).eval(), load_tokenizer(args.checkpoint)
    data = from_index(args.data_dir, style=TEST_STYLE)
    templates = templates_of(clip)
    with torch.inference_mode():
        names = zero_shot.label_embeddings(clip, tokenizer, data.class_names, templates)
        renamed, swapped = synonym_classes(clip, tokenizer, data.concepts, names, templates)
    pairs = load_paraphrases()
    synonyms = [pairs[data.concepts[row]]["synonym"] for row in renamed]
    winners = (names[renamed] @ swapped.T).argmax(dim=1)
    wins = winners == torch.tensor(renamed)
    cosine = (names[renamed] * swapped[renamed]).sum(dim=1)
    print(
        f"{args.checkpoint} (templates {templates}): with each image on its name's embedding, the synonym wins "
        f"{wins.float().mean().item() * 100:.1f} % of {len(renamed)}; mean cosine of name and synonym "
        f"{cosine.mean().item():.3f}"
    )
    if args.misses:
        for row, synonym, winner, won in zip(renamed, synonyms, winners.tolist(), wins.tolist()):
            if not won:
                print(f"  {data.class_names[row]!r} -> {synonym!r} loses to {data.class_names[winner]!r}")


if __name__ == "__main__":
    main()
